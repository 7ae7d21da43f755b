"""Idefics3: SigLIP with image splitting and pixel shuffle (the connector), Llama LM `text_model`.

Images: nested (one list per sample; each image may be split into sub-images), pixel_values
[B, N, 3, H, W] + pixel_attention_mask [B, N, H, W]; both only reach the vision encoder.
"""

from __future__ import annotations

from vlalign.models.families.base import Family

IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}"
    "{{ m['role'] | capitalize }}"
    "{% if m['content'] is string %}: {{ m['content'] }}{% else %}"
    "{% if m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class Idefics3Family(Family):
    """Nested images (sub-images), its own module names for the LM, vision and connector."""

    name = "idefics3"
    image_keys = ("pixel_values", "pixel_attention_mask")
    pixel_keys = ("pixel_values", "pixel_attention_mask")
    nested_images = True
    lm_names = ("text_model",)
    vision_names = ("vision_model",)
    projector_names = ("connector",)

    def tiny(self, spec):
        """SigLIP-style vision (patch 8, no splitting), pixel shuffle x2, Llama LM."""
        from transformers import Idefics3Config, Idefics3Processor
        from transformers.models.idefics3 import Idefics3VisionConfig
        from transformers.models.idefics3.image_processing_pil_idefics3 import (
            Idefics3ImageProcessorPil,
        )

        from vlalign.models.tiny import llama_text_config
        from vlalign.models.tokenizer import train_tokenizer

        px, patch, scale, s = spec.resolved_image_size, 8, 2, spec.sizes
        specials = [
            "<fake_token_around_image>",
            "<image>",
            "<global-img>",
            "<end_of_utterance>",
            "<|begin_of_text|>",
        ]
        tok = train_tokenizer(specials, IDEFICS3_TEMPLATE)
        cfg = Idefics3Config(
            vision_config=Idefics3VisionConfig(
                hidden_size=s["vhidden"],
                intermediate_size=s["vhidden"] * 2,
                num_hidden_layers=s["vlayers"],
                num_attention_heads=2,
                image_size=px,
                patch_size=patch,
            ),
            text_config=llama_text_config(
                len(tok),
                s,
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.convert_tokens_to_ids("<end_of_utterance>"),
            ),
            image_token_id=tok.convert_tokens_to_ids("<image>"),
            scale_factor=scale,
            tie_word_embeddings=False,
        )
        image_processor = Idefics3ImageProcessorPil(
            do_image_splitting=False,
            size={"longest_edge": px},
            max_image_size={"longest_edge": px},
        )
        proc = Idefics3Processor(
            image_processor=image_processor,
            tokenizer=tok,
            image_seq_len=(px // patch) ** 2 // (scale * scale),
            chat_template=IDEFICS3_TEMPLATE,
        )
        return cfg, proc


FAMILY = Idefics3Family()
