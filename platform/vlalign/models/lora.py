"""The trainable-parameter policy: LoRA anchored on the language model, or full fine-tuning.

Vision towers have projections with the same names as the LM's (CLIP: q/k/v_proj; Qwen2.5-VL:
gate/up/down_proj), so targets are resolved to exact module names inside the LM, never suffixes.
Where the LM, the vision tower and the projector live is the family's (`Family.lm_names`,
`vision_names`, `projector_names`); a model of no known family is searched for any of them.
"""

from __future__ import annotations

import torch.nn as nn
from peft import LoraConfig, get_peft_model

from vlalign.config.schema import PeftConfig
from vlalign.errors import VlalignError
from vlalign.models.families import Family, all_families, family_of


def _names(model: nn.Module, attr: str) -> tuple[str, ...]:
    """The family's leaf names `attr` (lm_names, ...), or every family's for an unknown model."""
    fam = family_of(model)
    if fam is not None:
        return getattr(fam, attr)
    return tuple(dict.fromkeys(n for f in all_families() for n in getattr(f, attr)))


def _vision_leaves(model: nn.Module) -> tuple[str, ...]:
    return (family_of(model) or Family()).vision_lora_leaves


def _find(model: nn.Module, leaf_names: tuple[str, ...]) -> str | None:
    best = None
    for name, _ in model.named_modules():
        if name.split(".")[-1] in leaf_names and (best is None or len(name) < len(best)):
            best = name
    return best


def lm_prefix(model: nn.Module) -> str:
    """Qualified name of the language-model submodule (e.g. `model.language_model`)."""
    names = _names(model, "lm_names")
    found = _find(model, names)
    if found is None:
        raise VlalignError(
            f"cannot locate the language model inside this VLM (no module named {'/'.join(names)})"
        )
    return found


def vision_prefix(model: nn.Module) -> str | None:
    """Qualified name of the vision tower, if any."""
    return _find(model, _names(model, "vision_names"))


def projector_prefix(model: nn.Module) -> str | None:
    """Qualified name of the multimodal projector (or Qwen's merger, Idefics3's connector)."""
    return _find(model, _names(model, "projector_names"))


def _linear_names(model: nn.Module, prefix: str, leaves: list[str] | None) -> list[str]:
    out = []
    for name, mod in model.named_modules():
        if not name.startswith(prefix + "."):
            continue
        if isinstance(mod, nn.Linear) and (leaves is None or name.split(".")[-1] in leaves):
            out.append(name)
    return out


def lora_targets(model: nn.Module, cfg: PeftConfig) -> list[str]:
    """Exact module names that get LoRA adapters under the policy `cfg`."""
    targets = _linear_names(model, lm_prefix(model), cfg.target_modules)
    if not targets:
        raise VlalignError(
            f"peft.target_modules: none of {cfg.target_modules} exist in the language model"
        )
    if cfg.include_projector and (p := projector_prefix(model)):
        targets += _linear_names(model, p, None)
    if cfg.include_vision and (v := vision_prefix(model)):
        targets += _linear_names(model, v, [*cfg.target_modules, *_vision_leaves(model)])
    return targets


def _resolve_saved(model: nn.Module, names: list[str]) -> list[str]:
    lm = lm_prefix(model)
    all_names = {n for n, _ in model.named_modules()}
    out = []
    for n in names:
        for cand in (n, f"{lm}.{n}"):
            if cand in all_names:
                out.append(cand)
                break
        else:
            raise VlalignError(
                f"peft.modules_to_save: no module {n!r} at the top level or in the LM"
            )
    return out


def apply_peft(model: nn.Module, cfg: PeftConfig, seed: int = 0) -> nn.Module:
    """Apply the policy: returns a PeftModel (lora) or the model with frozen parts (full)."""
    import torch

    if cfg.mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.freeze_vision and (v := vision_prefix(model)):
            for name, p in model.named_parameters():
                if name.startswith(v + "."):
                    p.requires_grad_(False)
        return model
    torch.manual_seed(seed)  # LoRA A matrices are random: make them a function of the seed
    lcfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_targets(model, cfg),
        modules_to_save=_resolve_saved(model, cfg.modules_to_save) or None,
        bias="none",
    )
    return get_peft_model(model, lcfg)


def trainable_summary(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, total parameters)."""
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train, total
