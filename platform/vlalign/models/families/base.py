"""`Family`: everything vlalign needs to know about one VLM family, with the common defaults.

A family module (`vlalign/models/families/<name>.py`) defines one subclass and overrides only
what differs from these defaults (the LLaVA-style layout: a vision tower + projector + causal
LM with 1-D positions, flat image lists, pixel_values [n_images, 3, H, W]):

- images: which batch keys carry images (`image_keys`), which of them only the vision encoder
  reads (`pixel_keys`; the rest also go to the LM, e.g. Qwen's image_grid_thw), whether the
  processor wants one list of images per sample (`nested_images`, Idefics3 sub-images);
- tokens: the image placeholder id labels never cover (`image_token_id`), the per-token
  modality ids the LM needs (`token_type_key`: Qwen's M-RoPE mm_token_type_ids, Gemma 3's
  token_type_ids for bidirectional image attention), extra tokenizer arguments;
- LoRA anchors: leaf names of the LM, the vision tower and the projector;
- packing: position ids of a sequence and the dense attention mask of packed rows;
- the processor (no torchvision needed) and the built-in tiny twin's config + processor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from PIL import Image

    from vlalign.models.tiny import TinySpec


class Family:
    """Defaults shared by the families; a family module subclasses and overrides what differs."""

    name: ClassVar[str] = ""

    # -- images ---------------------------------------------------------------------------
    image_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_sizes")
    """Batch keys that carry images (once per sample, or per pair in preference batches)."""
    pixel_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)
    """The image keys only the vision encoder reads; the others are also LM inputs."""
    nested_images: ClassVar[bool] = False
    """The processor takes images as one list per sample (Idefics3) instead of a flat list."""

    # -- tokens ---------------------------------------------------------------------------
    mrope: ClassVar[bool] = False
    """Multimodal RoPE (Qwen): positions [3, B, T] the model computes from the images."""
    token_type_key: ClassVar[str | None] = None
    """Per-token modality ids [T] (1 on image tokens) the LM takes, under this kwarg name."""
    prompt_kwargs: ClassVar[dict] = {}
    """Extra arguments of the processor call on a chat-templated prompt."""

    # -- LoRA anchors (leaf module names; the shortest qualified match wins) --------------
    lm_names: ClassVar[tuple[str, ...]] = ("language_model",)
    vision_names: ClassVar[tuple[str, ...]] = ("vision_tower",)
    projector_names: ClassVar[tuple[str, ...]] = ("multi_modal_projector",)
    vision_lora_leaves: ClassVar[tuple[str, ...]] = ("qkv", "proj", "fc1", "fc2", "out_proj")
    """Linear leaves adapted in the vision tower under peft.include_vision (plus target_modules)."""

    # -- built-in tiny twin --------------------------------------------------------------
    tiny_image_size: ClassVar[int] = 32

    # ------------------------------------------------------------------------------------
    def processor_images(self, images: list[list[Image.Image]]) -> list:
        """Images of a batch (one list per sample) in the layout the processor's call takes."""
        if self.nested_images:
            return [list(ims) for ims in images]
        return [im for ims in images for im in ims]

    def image_token_id(self, processor) -> int:
        """The placeholder id the processor expands into image tokens (never a label)."""
        v = getattr(processor, "image_token_id", None)
        if isinstance(v, int):
            return v
        tok = getattr(processor, "image_token", None) or "<image>"
        return processor.tokenizer.convert_tokens_to_ids(tok)

    def token_types(self, input_ids: Tensor, image_token_id: int) -> Tensor:
        """Modality ids [..., T] of `input_ids` [..., T]: 1 on image tokens, 0 elsewhere."""
        return (input_ids == image_token_id).long()

    def load_processor(
        self, path: str, trust_remote_code: bool = False, revision: str | None = None
    ):
        """The processor saved at `path` (a directory or hub id)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(
            str(path), trust_remote_code=trust_remote_code, revision=revision
        )

    def position_ids(
        self,
        model: torch.nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_inputs: dict[str, Tensor],
        token_types: Tensor | None,
    ) -> Tensor:
        """Position ids [B, T] of right-padded sequences input_ids [B, T], as the model makes them.

        `model` is the transformers model (no wrappers); image_inputs and token_types are the
        batch's, for families whose positions depend on the images (Qwen's M-RoPE: [3, B, T]).
        """
        return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)

    def repeat_generation_state(self, model: torch.nn.Module, n: int) -> None:
        """After a prefill of P prompts whose cache is repeated n times for `generate`: repeat
        any per-row state the model keeps between forwards (none for 1-D position LMs)."""

    def packed_attention_mask(
        self,
        model: torch.nn.Module,
        allowed: Tensor,
        position_ids: Tensor,
        token_types: Tensor | None,
        dtype: torch.dtype,
    ) -> Tensor | dict[str, Tensor]:
        """The attention mask the LM takes for packed rows (`methods/packing.py`).

        allowed [B, T, T] bool (query, key) says which key each query sees in its own unshared
        sequence. Returns an additive float mask [B, 1, T, T] (0 where allowed, dtype's min
        elsewhere), or a dict of them by layer type for LMs with several attention kinds.
        """
        return additive(allowed, dtype)

    def tiny(self, spec: TinySpec) -> tuple[object, object]:
        """(transformers config, processor) of this family's built-in tiny twin."""
        raise NotImplementedError(f"family {self.name!r} has no built-in tiny model")


# Attention implementations that take a dense 4D mask as is (transformers passes one through
# unchanged to these; flash- and flex-attention take none): what packed rows need.
DENSE_MASK_ATTENTION = ("sdpa", "eager")


def attention_implementation(model: torch.nn.Module) -> str | None:
    """The LM's attention implementation (`_attn_implementation` of the text config, else the
    model's). `model` is the transformers model (no wrappers)."""
    impl = getattr(model.config, "_attn_implementation", None)
    text = model.config.get_text_config()
    return getattr(text, "_attn_implementation", None) or impl


def additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, T, T] bool visibility -> [B, 1, T, T] additive float mask (0 or dtype's min)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)
