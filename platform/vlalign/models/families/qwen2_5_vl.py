"""Qwen2.5-VL: Qwen2-VL's inputs (patch sequence + grid, M-RoPE, image-only processor) with a
windowed-attention vision tower whose blocks are SwiGLU MLPs (gate/up/down_proj, the LM's own
projection names: LoRA stays anchored on the LM by module prefix, never by suffix).
"""

from __future__ import annotations

from vlalign.models.families.qwen2_vl import Qwen2VLFamily


class Qwen25VLFamily(Qwen2VLFamily):
    """What differs from Qwen2-VL: the processor and config classes, the vision tower's shape."""

    name = "qwen2_5_vl"

    def processor_class(self) -> type:
        from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

        return Qwen2_5_VLProcessor

    def tiny_config_class(self) -> type:
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig

    def tiny_vision_config(self, s: dict, patch: int) -> dict:
        """Windows of one merged 2x2 unit (16 px), full attention in the last block."""
        return dict(
            depth=s["vlayers"],
            hidden_size=s["vhidden"],
            intermediate_size=s["vhidden"] * 2,
            num_heads=2,
            out_hidden_size=s["hidden"],
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=2 * patch,
            fullatt_block_indexes=[s["vlayers"] - 1],
            in_channels=3,
        )


FAMILY = Qwen25VLFamily()
