"""SmolVLM: the Idefics3 architecture (nested sub-images, connector) with a small LM."""

from __future__ import annotations

from vlalign.models.families.idefics3 import Idefics3Family


class SmolVLMFamily(Idefics3Family):
    """Idefics3's layout under its own name; no built-in tiny twin (tiny-idefics3 is one)."""

    name = "smolvlm"

    def tiny(self, spec):
        raise NotImplementedError("smolvlm has no built-in tiny model; use tiny-idefics3")


FAMILY = SmolVLMFamily()
