"""Loading a model's processor: the family decides how (`Family.load_processor`).

The Qwen-VL families build an image-only processor where torchvision is missing (their stock
processors need a video processor, which needs torchvision): see
`vlalign/models/families/image_only.py`. `Qwen2VLImageOnlyProcessor` and the like stay
importable from here.
"""

from __future__ import annotations

from pathlib import Path


def load_processor(
    path: str | Path, family: str, trust_remote_code: bool = False, revision: str | None = None
):
    """The processor of a model of `family` saved at `path` (the family decides how to load it)."""
    from vlalign.models.families import family as family_of_name

    return family_of_name(family).load_processor(str(path), trust_remote_code, revision)


def __getattr__(name: str):
    if name.endswith("ImageOnlyProcessor"):
        from vlalign.models.families import image_only

        return getattr(image_only, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
