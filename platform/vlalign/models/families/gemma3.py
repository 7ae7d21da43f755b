"""Gemma 3: SigLIP vision tower + pooled projector + Gemma 3 LM (sliding-window and global layers).

Quirks, all handled here:
- the chat template writes the assistant's role as `model`, trims texts and starts with
  `<bos>` (the processor call must not add a second one: `prompt_kwargs`); an image is written
  as `<start_of_image>`, which the processor expands to
  "\\n\\n<start_of_image>" + `<image_soft_token>` x mm_tokens_per_image + "<end_of_image>\\n\\n";
- the processor's `image_token_id` is the boi token; the tokens the image features fill (and
  the ones labels must never cover) are the soft tokens: `tokenizer.image_token_id`;
- image tokens attend to each other bidirectionally within an image: the LM takes
  token_type_ids [T] (1 on soft image tokens) and builds that mask itself; packed rows get the
  same visibility from `packed_attention_mask`, with the sliding window applied by position.
Images: given to the processor as one list per sample; pixel_values [n_images, 3, H, W] (pan-and-
scan crops are off by default).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlalign.models.families.base import Family, additive

GEMMA3_SPECIALS = (
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
GEMMA3_NAMED = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def image_blocks(token_types: Tensor) -> Tensor:
    """[B, T, T] bool: query and key are image tokens of the same image (one contiguous run)."""
    is_img = token_types == 1
    prev = torch.nn.functional.pad(is_img, (1, 0), value=False)[:, :-1]
    group = torch.cumsum((is_img & ~prev).long(), dim=1)
    group = torch.where(is_img, group, -1)
    return (group[:, :, None] == group[:, None, :]) & is_img[:, :, None]


class Gemma3Family(Family):
    """Soft image tokens, token_type_ids for bidirectional image attention, two attention kinds."""

    name = "gemma3"
    image_keys = ("pixel_values",)
    nested_images = True  # a batch's images: one list per prompt (a flat list is one prompt's)
    token_type_key = "token_type_ids"
    prompt_kwargs = {"add_special_tokens": False}

    def image_token_id(self, processor) -> int:
        return processor.tokenizer.image_token_id

    def packed_attention_mask(self, model, allowed, position_ids, token_types, dtype):
        """Full-attention layers: causal or same image; sliding layers: also within the window."""
        text = model.config.get_text_config()
        full = allowed if token_types is None else allowed | image_blocks(token_types)
        masks = {"full_attention": additive(full, dtype)}
        if "sliding_attention" in text.layer_types:
            dist = position_ids[:, :, None] - position_ids[:, None, :]  # query - key
            masks["sliding_attention"] = additive(full & (dist < text.sliding_window), dtype)
        return masks

    def tiny(self, spec):
        """SigLIP (patch 8) pooled to 4 image tokens, Gemma 3 LM: one sliding (window 16) and
        one global layer per pair; the Gemma 3 processor and template."""
        from transformers import Gemma3Config, Gemma3Processor
        from transformers.models.gemma3.image_processing_pil_gemma3 import (
            Gemma3ImageProcessorPil,
        )

        from vlalign.models.tokenizer import train_tokenizer

        px, patch, s = spec.resolved_image_size, 8, spec.sizes
        tok = train_tokenizer(list(GEMMA3_SPECIALS), GEMMA3_TEMPLATE, named_tokens=GEMMA3_NAMED)
        n_img = 4
        head_dim = s["hidden"] // s["heads"]
        cfg = Gemma3Config(
            text_config=dict(
                vocab_size=len(tok),
                hidden_size=s["hidden"],
                intermediate_size=s["mlp"],
                num_hidden_layers=s["layers"],
                num_attention_heads=s["heads"],
                num_key_value_heads=s["kv"],
                head_dim=head_dim,
                query_pre_attn_scalar=head_dim,
                sliding_window=16,
                layer_types=["sliding_attention", "full_attention"] * (s["layers"] // 2),
                max_position_embeddings=1024,
                tie_word_embeddings=False,
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.convert_tokens_to_ids("<end_of_turn>"),
            ),
            vision_config=dict(
                model_type="siglip_vision_model",
                hidden_size=s["vhidden"],
                intermediate_size=s["vhidden"] * 2,
                num_hidden_layers=s["vlayers"],
                num_attention_heads=2,
                image_size=px,
                patch_size=patch,
                vision_use_head=False,
            ),
            mm_tokens_per_image=n_img,
            boi_token_index=tok.boi_token_id,
            eoi_token_index=tok.eoi_token_id,
            image_token_index=tok.image_token_id,
            tie_word_embeddings=False,
        )
        image_processor = Gemma3ImageProcessorPil(
            size={"height": px, "width": px}, do_pan_and_scan=False
        )
        proc = Gemma3Processor(
            image_processor=image_processor,
            tokenizer=tok,
            chat_template=GEMMA3_TEMPLATE,
            image_seq_length=n_img,
        )
        return cfg, proc


FAMILY = Gemma3Family()
