"""LLaVA-1.5 style: CLIP/SigLIP vision tower + MLP projector + Llama/Qwen2 LM (the defaults).

Images: pixel_values [n_images, 3, H, W], one flat list per batch; `<image>` expands to the
vision tower's patch count (CLS dropped with vision_feature_select_strategy "default").
"""

from __future__ import annotations

from vlalign.models.families.base import Family

LLAVA_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}USER: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% else %} ASSISTANT:"
    "{% if m['content'] is string %} {{ m['content'] }}{% else %}"
    "{% for c in m['content'] %} {{ c['text'] }}{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


class LlavaFamily(Family):
    """Everything is the `Family` default; only the tiny twin is LLaVA's own."""

    name = "llava"

    def tiny(self, spec):
        """CLIP (patch 8, (px/8)^2 image tokens) + Llama, the LLaVA processor and template."""
        from transformers import LlavaConfig, LlavaProcessor
        from transformers.models.clip import CLIPVisionConfig
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        from vlalign.models.tiny import llama_text_config
        from vlalign.models.tokenizer import train_tokenizer

        px, patch, s = spec.resolved_image_size, 8, spec.sizes
        tok = train_tokenizer(["<image>"], LLAVA_TEMPLATE)
        cfg = LlavaConfig(
            vision_config=CLIPVisionConfig(
                hidden_size=s["vhidden"],
                intermediate_size=s["vhidden"] * 2,
                num_hidden_layers=s["vlayers"],
                num_attention_heads=2,
                image_size=px,
                patch_size=patch,
                projection_dim=s["vhidden"],
            ),
            text_config=llama_text_config(
                len(tok),
                s,
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
            ),
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            image_seq_length=(px // patch) ** 2,
        )
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": px}, crop_size={"height": px, "width": px}
        )
        proc = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=patch,
            vision_feature_select_strategy="default",
            chat_template=LLAVA_TEMPLATE,
            image_token="<image>",
            num_additional_image_tokens=1,
        )
        return cfg, proc


FAMILY = LlavaFamily()
