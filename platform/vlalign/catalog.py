"""The catalog: every training method, loss and model family vlalign knows, by name (torch-free).

This is the one list. The recipe schema (`config/schema.py`) takes its method names, loss names
and family names from here; `config/checks.py` reads the losses' properties (reference-free,
label smoothing); `vlalign ls` and the README's recipe reference print the summaries. Each entry
names the module that implements it, and a test (`tests/unit/test_catalog.py`) proves that every
entry validates in a recipe and resolves to its implementation, so the lists cannot drift.

Importing this module imports nothing heavy (the CLI starts without torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BatchKind = Literal["sft", "pairs", "unpaired", "prompts"]
"""What a method's batches hold: sft (one sequence per sample), pairs (chosen + rejected per
prompt, the image once per pair), unpaired (desirable and undesirable completions, and
mismatched rows for KTO's reference point), prompts (prompt, images and meta for online RL)."""

LossKind = Literal["sft", "preference", "unpaired", "reward", "policy", "cost"]


@dataclass(frozen=True)
class LossInfo:
    """A loss variant: which kind (which signature), and what it needs from its method."""

    name: str
    kind: LossKind
    summary: str
    paper: str = ""
    reference_free: bool = False  # runs without reference log-probs
    label_smoothing: bool = False  # accepts method.label_smoothing > 0


@dataclass(frozen=True)
class MethodInfo:
    """A training method: its batches, its loss kind and default loss, its module."""

    name: str
    batch_kind: BatchKind
    loss_kind: LossKind
    default_loss: str
    summary: str
    module: str  # implements the `vlalign.methods.base.Method` protocol


@dataclass(frozen=True)
class FamilyInfo:
    """A VLM family: the transformers model types it covers and its built-in tiny twin."""

    name: str
    model_types: tuple[str, ...]  # config.json `model_type` values
    builtin: str | None  # built-in tiny model name, if any
    summary: str
    module: str  # everything family-specific lives here


LOSSES: dict[str, LossInfo] = {
    x.name: x
    for x in (
        LossInfo("sft", "sft", "mean token NLL over response tokens", reference_free=True),
        LossInfo(
            "sigmoid",
            "preference",
            "DPO; with label_smoothing > 0, conservative DPO (cDPO)",
            "Rafailov et al. 2023; Mitchell 2023",
            label_smoothing=True,
        ),
        LossInfo(
            "robust",
            "preference",
            "robust DPO: unbiased under preference-label noise (label_smoothing = noise rate)",
            "Chowdhury et al. 2024",
            label_smoothing=True,
        ),
        LossInfo("ipo", "preference", "IPO on token-averaged log-ratios", "Azar et al. 2023"),
        LossInfo("hinge", "preference", "SLiC hinge on the DPO log-ratio", "Zhao et al. 2023"),
        LossInfo(
            "simpo",
            "preference",
            "SimPO: length-normalized, reference-free, target margin gamma",
            "Meng et al. 2024",
            reference_free=True,
            label_smoothing=True,
        ),
        LossInfo(
            "orpo",
            "preference",
            "ORPO: odds ratio + chosen NLL, reference-free",
            "Hong et al. 2024",
            reference_free=True,
        ),
        LossInfo(
            "kto",
            "unpaired",
            "KTO: prospect-theoretic loss on unpaired desirable/undesirable answers",
            "Ethayarajh et al. 2024",
        ),
        LossInfo(
            "grpo",
            "policy",
            "GRPO: group-normalized advantages, clipped ratio, per-sequence token mean",
            "Shao et al. 2024",
        ),
        LossInfo(
            "dr_grpo",
            "policy",
            "Dr. GRPO: no length or std normalization (token sum / constant length)",
            "Liu et al. 2025",
        ),
        LossInfo(
            "dapo",
            "policy",
            "DAPO: token-level mean, clip-higher, tied groups filtered, overlong penalty",
            "Yu et al. 2025",
        ),
        LossInfo("gspo", "policy", "GSPO: sequence-level importance ratio", "Zheng et al. 2025"),
        LossInfo(
            "rloo",
            "policy",
            "RLOO: REINFORCE with the leave-one-out baseline",
            "Ahmadian et al. 2024",
        ),
        LossInfo(
            "bradley_terry",
            "reward",
            "pairwise reward-model loss (optional margin)",
            "Ouyang et al. 2022",
            reference_free=True,
        ),
        LossInfo(
            "safe_rlhf_cost",
            "cost",
            "Safe RLHF cost-model loss: the more harmful answer costs more, cost > 0 reads unsafe",
            "Dai et al. 2024; Ji et al. 2025",
            reference_free=True,
        ),
    )
}

METHODS: dict[str, MethodInfo] = {
    x.name: x
    for x in (
        MethodInfo(
            "sft",
            "sft",
            "sft",
            "sft",
            "supervised fine-tuning on response tokens",
            "vlalign.methods.sft",
        ),
        MethodInfo(
            "dpo",
            "pairs",
            "preference",
            "sigmoid",
            "direct preference optimization and its family (loss by name)",
            "vlalign.methods.dpo",
        ),
        MethodInfo(
            "kto",
            "unpaired",
            "unpaired",
            "kto",
            "KTO on unpaired desirable / undesirable answers (preference pairs are split)",
            "vlalign.methods.kto",
        ),
        MethodInfo(
            "grpo",
            "prompts",
            "policy",
            "grpo",
            "online RL: n samples per prompt from the policy, rewards that see the image, "
            "GRPO family or RLOO (loss by name)",
            "vlalign.methods.grpo",
        ),
        MethodInfo(
            "safe_rlhf",
            "prompts",
            "policy",
            "grpo",
            "constrained online RL (Safe RLHF): reward up, cost per harm category and benign "
            "over-refusal under budgets, one Lagrange multiplier each",
            "vlalign.methods.safe_rlhf",
        ),
        MethodInfo(
            "reward",
            "pairs",
            "reward",
            "bradley_terry",
            "reward model: the VLM with a scalar head, pairwise loss",
            "vlalign.methods.reward",
        ),
        MethodInfo(
            "cost",
            "pairs",
            "cost",
            "safe_rlhf_cost",
            "cost model (Safe RLHF): the VLM with a scalar head on safety pairs and labels",
            "vlalign.methods.cost",
        ),
    )
}

FAMILIES: dict[str, FamilyInfo] = {
    x.name: x
    for x in (
        FamilyInfo(
            "llava",
            ("llava",),
            "tiny-llava",
            "LLaVA-1.5 style: CLIP/SigLIP vision + projector + Llama/Qwen2 LM",
            "vlalign.models.families.llava",
        ),
        FamilyInfo(
            "qwen2_vl",
            ("qwen2_vl",),
            "tiny-qwen2-vl",
            "Qwen2-VL: native-resolution patches merged 2x2, M-RoPE",
            "vlalign.models.families.qwen2_vl",
        ),
        FamilyInfo(
            "qwen2_5_vl",
            ("qwen2_5_vl",),
            "tiny-qwen2.5-vl",
            "Qwen2.5-VL: windowed-attention vision tower with SwiGLU blocks, M-RoPE",
            "vlalign.models.families.qwen2_5_vl",
        ),
        FamilyInfo(
            "idefics3",
            ("idefics3",),
            "tiny-idefics3",
            "Idefics3: SigLIP with image splitting and pixel shuffle, Llama LM",
            "vlalign.models.families.idefics3",
        ),
        FamilyInfo(
            "smolvlm",
            ("smolvlm",),
            None,
            "SmolVLM: the Idefics3 architecture with a small LM",
            "vlalign.models.families.smolvlm",
        ),
        FamilyInfo(
            "gemma3",
            ("gemma3",),
            "tiny-gemma3",
            "Gemma 3: SigLIP + pooled projector, Gemma 3 LM; bidirectional attention within images",
            "vlalign.models.families.gemma3",
        ),
    )
}


@dataclass(frozen=True)
class RewardInfo:
    """An online-RL reward: every reward sees (image, prompt, response, meta)."""

    name: str
    summary: str
    needs_model: bool  # `model:` (a path or hub id) is required


REWARDS: dict[str, RewardInfo] = {
    x.name: x
    for x in (
        RewardInfo(
            "refusal_rule",
            "label-aware safety rule from the sample's meta: refuse harmful, help benign; "
            "degenerate text penalized",
            False,
        ),
        RewardInfo(
            "reward_model",
            "a vlalign-trained VLM reward model (method: reward), with the image",
            True,
        ),
        RewardInfo("judge", "a VLM judge / guard prompted for a verdict on the answer", True),
        RewardInfo(
            "validity",
            "text validity guard: degenerate text (empty, repeated words/characters/patterns) "
            "scores `invalid`, valid text `valid`; pairs a learned reward with what it never saw",
            False,
        ),
    )
}


def losses_of(kind: LossKind) -> list[str]:
    """Names of the losses of one kind, in catalog order."""
    return [x.name for x in LOSSES.values() if x.kind == kind]


def losses_for(method: str) -> list[str]:
    """Names of the losses method `method` can train with."""
    return losses_of(METHODS[method].loss_kind)


def builtin_models() -> dict[str, str]:
    """Built-in tiny model name -> family."""
    return {f.builtin: f.name for f in FAMILIES.values() if f.builtin}


def family_of_model_type(model_type: str) -> str | None:
    """The family a transformers `model_type` belongs to, or None."""
    for f in FAMILIES.values():
        if model_type in f.model_types:
            return f.name
    return None
