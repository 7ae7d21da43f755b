"""Image-only processors for machines without torchvision (shared by the Qwen-VL families).

Without torchvision, transformers cannot build the video processor that the Qwen2-VL /
Qwen2.5-VL processors require in __init__ ("VIDEO_PROCESSOR_MAPPING has no attribute
'_extra_content'"). vlalign only needs images, so `image_only(cls)` makes a processor class that
is built from the image processor, tokenizer and chat template alone.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer, ProcessorMixin


def has_torchvision() -> bool:
    """True when torchvision is importable (the stock video-capable processors then load)."""
    return importlib.util.find_spec("torchvision") is not None


@cache
def image_only(base: type) -> type:
    """A subclass of the processor class `base` without a video processor (images and text).

    It saves under `base`'s name, so AutoProcessor reloads the stock class where torchvision
    exists.
    """
    stock = base.__name__
    name = stock.removesuffix("Processor") + "ImageOnlyProcessor"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def save_pretrained(self, save_directory, **kwargs):
        out = base.save_pretrained(self, save_directory, **kwargs)
        for fname in ("processor_config.json", "preprocessor_config.json"):
            p = Path(save_directory) / fname
            if p.is_file():
                p.write_text(p.read_text().replace(name, stock))
        return out

    return type(
        name,
        (base,),
        {
            "__init__": __init__,
            "save_pretrained": save_pretrained,
            "__doc__": f"{stock} without a video processor (images and text only).",
            "__module__": __name__,
        },
    )


def load_image_only(
    base: type, path: str | Path, trust_remote_code: bool = False, revision: str | None = None
):
    """Build `image_only(base)` from the tokenizer, image processor and chat template at `path`."""
    kw = dict(trust_remote_code=trust_remote_code, revision=revision)
    tok = AutoTokenizer.from_pretrained(str(path), **kw)
    ip = AutoImageProcessor.from_pretrained(str(path), **kw)
    return image_only(base)(image_processor=ip, tokenizer=tok, chat_template=tok.chat_template)


def __getattr__(name: str):
    """`<Stock>ImageOnlyProcessor` for any transformers `<Stock>Processor` (e.g.
    Qwen2VLImageOnlyProcessor): the classes `image_only` makes live here by name, so processors
    pickle by reference and unpickle in a fresh process (Ray workers, dataloader workers)."""
    if name.endswith("ImageOnlyProcessor"):
        import transformers

        stock = name.removesuffix("ImageOnlyProcessor") + "Processor"
        base = getattr(transformers, stock, None)
        if base is not None:
            return image_only(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
