"""Qwen2-VL: native-resolution patches merged 2x2 (vision `visual`, projector `merger`), M-RoPE.

Images: pixel_values [sum patches, D] (vision encoder only) + image_grid_thw [n_images, 3],
which the LM also reads to build its 3-D rotary positions. The LM takes mm_token_type_ids [T]
(1 on image tokens) to find the image spans; positions are [3, B, T] from the model's own
`get_rope_index`. Without torchvision the processor is built image-only.
"""

from __future__ import annotations

from torch import Tensor

from vlalign.models.families.base import Family

# Qwen2-VL's special tokens (the chat turns, the vision span and its placeholders).
QWEN_SPECIALS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Qwen2VLFamily(Family):
    """Patch-sequence images with a grid, M-RoPE positions, image-only processor."""

    name = "qwen2_vl"
    image_keys = ("pixel_values", "image_grid_thw")
    pixel_keys = ("pixel_values",)
    token_type_key = "mm_token_type_ids"
    mrope = True
    vision_names = ("visual",)
    projector_names = ("merger",)

    def processor_class(self) -> type:
        """The stock transformers processor class of this family."""
        from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

        return Qwen2VLProcessor

    def load_processor(self, path, trust_remote_code=False, revision=None):
        """AutoProcessor where torchvision exists, else the image-only processor."""
        from vlalign.models.families.image_only import has_torchvision, load_image_only

        if has_torchvision():
            return super().load_processor(path, trust_remote_code, revision)
        return load_image_only(self.processor_class(), path, trust_remote_code, revision)

    def repeat_generation_state(self, model, n: int) -> None:
        """The rope deltas of the prefilled prompts ([P, 1], `model.model.rope_deltas`, which
        `generate` adds to the text positions of a continued cache), repeated for the n rows."""
        deltas = getattr(model.model, "rope_deltas", None)
        if deltas is not None:
            model.model.rope_deltas = deltas.repeat_interleave(n, dim=0)

    def position_ids(self, model, input_ids, attention_mask, image_inputs, token_types) -> Tensor:
        """M-RoPE positions [3, B, T] from the model's `get_rope_index`."""
        from vlalign.errors import VlalignError

        if token_types is None:
            raise VlalignError(
                f"family {self.name}: M-RoPE positions need {self.token_type_key} in the batch"
            )
        pos, _ = model.model.get_rope_index(
            input_ids,
            image_grid_thw=image_inputs.get("image_grid_thw"),
            attention_mask=attention_mask,
            mm_token_type_ids=token_types,
        )
        return pos

    # -- tiny twin ------------------------------------------------------------------------
    def tiny_text_config(self, tok, s: dict) -> dict:
        """The Qwen2 LM of the tiny twin; mrope_section sums to head_dim / 2."""
        half = s["hidden"] // s["heads"] // 2
        t = half // 4
        mrope = [t, (half - t) // 2, half - t - (half - t) // 2]
        return dict(
            vocab_size=len(tok),
            hidden_size=s["hidden"],
            intermediate_size=s["mlp"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["kv"],
            max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
            tie_word_embeddings=False,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        )

    def tiny_vision_config(self, s: dict, patch: int) -> dict:
        return dict(
            depth=s["vlayers"],
            embed_dim=s["vhidden"],
            hidden_size=s["hidden"],
            num_heads=2,
            mlp_ratio=2,
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_chans=3,
        )

    def tiny_config_class(self) -> type:
        from transformers import Qwen2VLConfig

        return Qwen2VLConfig

    def tiny(self, spec):
        """Vision patch 8 merged 2x2 ((px/16)^2 image tokens), Qwen2 LM with M-RoPE."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        from vlalign.models.families.image_only import image_only
        from vlalign.models.tokenizer import train_tokenizer

        px, patch, s = spec.resolved_image_size, 8, spec.sizes
        tok = train_tokenizer(list(QWEN_SPECIALS), QWEN_TEMPLATE)
        ids = {k: tok.convert_tokens_to_ids(k) for k in QWEN_SPECIALS}
        cfg = self.tiny_config_class()(
            text_config=self.tiny_text_config(tok, s),
            vision_config=self.tiny_vision_config(s, patch),
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=False,
        )
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=px * px,
            max_pixels=px * px,
            patch_size=patch,
            merge_size=2,
            temporal_patch_size=2,
        )
        proc = image_only(self.processor_class())(
            image_processor=image_processor, tokenizer=tok, chat_template=QWEN_TEMPLATE
        )
        return cfg, proc


FAMILY = Qwen2VLFamily()
__all__ = ["FAMILY", "QWEN_SPECIALS", "QWEN_TEMPLATE", "Qwen2VLFamily"]
