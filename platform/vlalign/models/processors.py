"""Loading processors, with the image-only Qwen2-VL processor for machines without torchvision.

Without torchvision, transformers cannot build the video processor that Qwen2-VL /
Qwen2.5-VL processors require in __init__ ("VIDEO_PROCESSOR_MAPPING has no attribute
'_extra_content'"). vlalign only needs images, so it builds the same processor from the image
processor, tokenizer and chat template alone.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without a video processor (images and text only)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def save_pretrained(self, save_directory, **kwargs):
        """Save under the stock class name so AutoProcessor reloads it where torchvision exists."""
        out = super().save_pretrained(save_directory, **kwargs)
        for name in ("processor_config.json", "preprocessor_config.json"):
            p = Path(save_directory) / name
            if p.is_file():
                p.write_text(p.read_text().replace("Qwen2VLImageOnlyProcessor", "Qwen2VLProcessor"))
        return out


QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")


def load_processor(
    path: str | Path, family: str, trust_remote_code: bool = False, revision: str | None = None
):
    """AutoProcessor, or for Qwen2-VL families without torchvision the image-only processor."""
    kw = dict(trust_remote_code=trust_remote_code, revision=revision)
    if family not in QWEN_FAMILIES or importlib.util.find_spec("torchvision") is not None:
        return AutoProcessor.from_pretrained(str(path), **kw)
    tok = AutoTokenizer.from_pretrained(str(path), **kw)
    ip = AutoImageProcessor.from_pretrained(str(path), **kw)
    return Qwen2VLImageOnlyProcessor(
        image_processor=ip,
        tokenizer=tok,
        chat_template=tok.chat_template or getattr(tok, "chat_template", None),
    )
