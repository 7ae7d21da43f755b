"""Where the shipped recipes and DeepSpeed templates are, installed or in a checkout.

In a wheel (`pip install .`, a cluster image) they are package data: `vlalign/_shipped/recipes/`
and `vlalign/_shipped/deepspeed/`, copied from the checkout's `recipes/` and `cluster/deepspeed/`
at build time by `vlalign._shipped.build` (the top-level layout stays as it is). Run from a
checkout (an editable install, PYTHONPATH=platform) those folders are not here, and the
checkout's own are used.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[3]  # <checkout>/platform/vlalign/_shipped


def _locate(packaged: str, *in_checkout: str) -> Path:
    """The package data folder when installed, else the checkout's; the first if neither is."""
    data = Path(str(resources.files(__name__).joinpath(packaged)))
    if data.is_dir():
        return data
    checkout = _CHECKOUT.joinpath(*in_checkout)
    return checkout if checkout.is_dir() else data


def recipes_dir() -> Path:
    """The shipped recipes: `tiny/dpo` is `recipes_dir() / "tiny/dpo.yaml"`."""
    return _locate("recipes", "recipes")


def deepspeed_dir() -> Path:
    """The DeepSpeed JSON templates (`zero2.json`, ...)."""
    return _locate("deepspeed", "cluster", "deepspeed")
