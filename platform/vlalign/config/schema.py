"""The recipe schema: every field typed, described in one line, and defaulted.

This module is the documentation of a recipe: README's recipe reference is generated from it
(`vlalign.config.reference`). A misspelled key or a wrong type is an error naming the key path.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from vlalign import catalog, regression_keys
from vlalign.scorecard import DIRECTION, metric_direction

BUILTIN_FAMILY: dict[str, str] = catalog.builtin_models()
BUILTIN_MODELS = tuple(BUILTIN_FAMILY)
MODEL_FAMILIES = tuple(catalog.FAMILIES)
FamilyName = Literal[("auto", *MODEL_FAMILIES)]  # type: ignore[valid-type]


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """Which VLM to fine-tune and how to load it."""

    name: str = Field(
        "tiny-llava",
        description=f"Built-in tiny model ({', '.join(BUILTIN_MODELS)}), local directory or hub id.",
    )
    family: FamilyName = Field(
        "auto",
        description="Model family (chat template, image tokens, LoRA anchor); auto: from the name or config.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype of the weights as loaded."
    )
    trust_remote_code: bool = Field(
        False,
        description="Allow code shipped with a hub model to run. Only set for sources you trust.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to load.")
    seed: int = Field(0, ge=0, description="Seed of the random weights of a built-in tiny model.")
    size: Literal["nano", "small"] = Field(
        "nano", description="Size of a built-in tiny model: nano (~0.2M params) or small (~2.5M)."
    )
    image_size: int | None = Field(
        None, ge=8, description="Input image side in pixels for built-ins (default per family)."
    )
    cache_dir: str | None = Field(
        None,
        description="Where built-in models are materialized (default ~/.cache/vlalign/models).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory."
    )


class PeftConfig(Section):
    """What is trained: LoRA adapters (anchored on the language model) or the full model."""

    mode: Literal["lora", "full"] = Field(
        "lora", description="lora: train adapters only; full: all weights."
    )
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        description="Projection names adapted inside the language model (attention and MLP).",
    )
    include_projector: bool = Field(
        False, description="Also adapt the multimodal projector's linear layers."
    )
    include_vision: bool = Field(False, description="Also adapt the vision tower's projections.")
    freeze_vision: bool = Field(
        True, description="Keep the vision tower frozen (also in full fine-tuning)."
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full beside LoRA, e.g. [lm_head, norm] for a random tiny base.",
    )


class AugmentConfig(Section):
    """Training-time augmentation of images and prompts (never applied to evaluation).

    Each sample's draw is seeded by (train.seed, epoch, sample key): a resumed run sees the same
    augmented images, and every epoch sees new ones.
    """

    enabled: bool = Field(False, description="Augment training samples (images and prompts).")
    scale: tuple[float, float] = Field(
        (0.7, 1.3),
        description="Zoom range: <1 shrinks the image inside the frame, >1 crops into it.",
    )
    translate: float = Field(
        0.12, ge=0, le=0.5, description="Largest shift of the content, as a fraction of the side."
    )
    flip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    brightness: float = Field(
        0.25, ge=0, lt=1, description="Brightness factor drawn from 1 +- this."
    )
    contrast: float = Field(0.25, ge=0, lt=1, description="Contrast factor drawn from 1 +- this.")
    saturation: float = Field(
        0.25, ge=0, lt=1, description="Saturation factor drawn from 1 +- this."
    )
    hue: float = Field(
        0.02,
        ge=0,
        le=0.5,
        description="Hue shift drawn from +- this (fraction of the colour circle); keep it small "
        "where colour carries meaning.",
    )
    colour_cast: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Per-channel colour cast: R, G and B each get their own offset drawn from "
        "+- this (fraction of 255), added to every pixel (0: off).",
    )
    tint: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Tint of the neutral regions: R, G and B each get their own offset drawn from "
        "+- this (fraction of 255), scaled per pixel by 1 - its saturation, so grey backgrounds "
        "take the tint and saturated objects keep their colour (0: off).",
    )
    erase: int = Field(
        0,
        ge=0,
        le=32,
        description="Random erasing: up to this many rectangles, each of a random flat grey-ish "
        "colour, pasted per image (the count drawn from 0..this; 0: off).",
    )
    erase_size: float = Field(
        0.12,
        gt=0,
        le=0.5,
        description="Largest side of an erased rectangle, as a fraction of the image side.",
    )
    noise: float = Field(
        0.03, ge=0, le=1, description="Std of Gaussian pixel noise, as a fraction of 255."
    )
    paraphrase: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Probability of replacing the prompt by one of the record's paraphrases.",
    )

    @model_validator(mode="after")
    def _scale_range(self) -> AugmentConfig:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        return self


class DataConfig(Section):
    """Where the shards are and how they are read."""

    train: str | None = Field(
        None,
        description="Training shard directory (with manifest.json) or URL prefix; null: synthesize.",
    )
    eval: str | None = Field(None, description="Held-out eval shard directory or URL prefix.")
    train_split: str = Field("train", description="Split of `train` to read.")
    eval_split: str = Field("eval", description="Split of `eval` to read.")
    max_length: int = Field(
        512,
        ge=16,
        description="Max tokens per sequence; the response tail is cut, never image tokens.",
    )
    on_error: Literal["raise", "skip"] = Field(
        "raise",
        description="Bad sample policy: raise names shard and key; skip counts it in metrics.",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per rank.")
    shuffle_buffer: int = Field(
        256, ge=0, description="Samples in the shuffle buffer (0: no shuffle)."
    )
    reader: Literal["webdataset", "ray_data"] = Field(
        "webdataset", description="Under Ray: stream shards per rank (webdataset) or via Ray Data."
    )
    synth_pairs: int = Field(
        512, ge=8, description="Pairs `vlalign run` synthesizes when `train` is null."
    )
    synth_seed: int = Field(0, ge=0, description="Seed of synthesized data.")
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig,
        description="Training-time image and prompt augmentation (off by default).",
    )


def _losses(method: str) -> Any:
    """Literal of the loss names a method accepts (from the catalog)."""
    return Literal[tuple(catalog.losses_for(method))]  # type: ignore[valid-type]


class _MethodBase(Section):
    """Fields every method has."""

    logprob_chunk: int = Field(
        1024, ge=1, description="Tokens per chunk when computing log-probs over the vocabulary."
    )

    @property
    def info(self) -> catalog.MethodInfo:
        """The method's catalog entry."""
        return catalog.METHODS[self.name]  # type: ignore[attr-defined]

    @property
    def loss_info(self) -> catalog.LossInfo:
        """The loss's catalog entry."""
        return catalog.LOSSES[self.loss]  # type: ignore[attr-defined]


class SftMethod(_MethodBase):
    """Supervised fine-tuning: token cross-entropy over response tokens."""

    name: Literal["sft"] = Field("sft", description="Training method.")
    loss: _losses("sft") = Field("sft", description="Loss variant.")


Reference = Literal["adapter_disabled", "frozen_copy", "precomputed", "none"]


class DpoMethod(_MethodBase):
    """DPO and its family, the loss chosen by name (catalog: kind preference)."""

    name: Literal["dpo"] = Field("dpo", description="Training method.")
    loss: _losses("dpo") = Field(
        catalog.METHODS["dpo"].default_loss,
        description="Loss variant: " + ", ".join(catalog.losses_for("dpo")) + ".",
    )
    beta: float = Field(
        0.1, gt=0, description="DPO temperature (SimPO: reward scale; ORPO: odds-ratio weight)."
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Assumed preference-label noise (sigmoid: conservative DPO; robust: robust DPO).",
    )
    gamma: float = Field(
        0.5,
        ge=0.0,
        description="SimPO target reward margin (the margin itself, as TRL's simpo_gamma).",
    )
    nll_weight: float = Field(
        0.0, ge=0.0, description="Weight of an NLL term on the chosen answer (RPO); 0 disables it."
    )
    reference: Reference = Field(
        "adapter_disabled",
        description="Reference: LoRA disabled (no copy), a frozen copy, cached log-probs, or none.",
    )
    reference_cache_dir: str | None = Field(
        None,
        description="Where precomputed reference log-probs are cached (default ~/.cache/vlalign/reference-logps).",
    )
    share_vision: bool = Field(
        True,
        description="Run the vision tower once per pair and share its features (when supported).",
    )
    pack_prefix: bool = Field(
        False,
        description="Pack [prompt, chosen, rejected] into one row with a 4D mask: the shared prefix runs once.",
    )

    @model_validator(mode="after")
    def _loss_fits(self) -> DpoMethod:
        info = catalog.LOSSES[self.loss]
        if self.label_smoothing > 0 and not info.label_smoothing:
            takes = [n for n in catalog.losses_for("dpo") if catalog.LOSSES[n].label_smoothing]
            raise ValueError(
                f"label_smoothing: {self.label_smoothing} is not used by loss {self.loss!r}; "
                f"losses that take it: {', '.join(takes)}"
            )
        if info.reference_free and self.reference == "precomputed":
            raise ValueError(f"reference: loss {self.loss!r} is reference-free: use none")
        if not info.reference_free and self.reference == "none":
            raise ValueError(f"reference: loss {self.loss!r} needs a reference (not none)")
        return self


class KtoMethod(_MethodBase):
    """KTO on unpaired answers; preference pairs split into a desirable and an undesirable one."""

    name: Literal["kto"] = Field("kto", description="Training method.")
    loss: _losses("kto") = Field("kto", description="Loss variant.")
    beta: float = Field(0.1, gt=0, description="KTO temperature on the policy/reference log-ratio.")
    desirable_weight: float = Field(1.0, gt=0, description="Weight lambda_D of desirable examples.")
    undesirable_weight: float = Field(
        1.0, gt=0, description="Weight lambda_U of undesirable examples."
    )
    reference: Literal["adapter_disabled", "frozen_copy"] = Field(
        "adapter_disabled", description="Reference: LoRA disabled (no copy) or a frozen copy."
    )


class RewardMethod(_MethodBase):
    """Reward model: the VLM with a scalar head trained on preference pairs."""

    name: Literal["reward"] = Field("reward", description="Training method.")
    loss: _losses("reward") = Field("bradley_terry", description="Loss variant.")
    reward_margin: float = Field(0.0, ge=0.0, description="Margin in the pairwise loss.")
    share_vision: bool = Field(
        True,
        description="Run the vision tower once per pair and share its features (when supported).",
    )


class CostMethod(_MethodBase):
    """Cost model (Safe RLHF): the VLM with a scalar head on safety pairs (chosen = safer)."""

    name: Literal["cost"] = Field("cost", description="Training method.")
    loss: _losses("cost") = Field("safe_rlhf_cost", description="Loss variant.")
    margin: float = Field(
        0.0, ge=0.0, description="Margin in the pairwise term (the more harmful answer costs more)."
    )
    sign_weight: float = Field(
        1.0,
        ge=0.0,
        description="Weight of the classification term: cost > 0 for unsafe, < 0 for safe answers.",
    )
    share_vision: bool = Field(
        True,
        description="Run the vision tower once per pair and share its features (when supported).",
    )


class RewardSpec(Section):
    """One online-RL reward; every reward sees (image, prompt, response, meta)."""

    name: Literal[tuple(catalog.REWARDS)] = Field(  # type: ignore[valid-type]
        ..., description="Reward: " + ", ".join(catalog.REWARDS) + "."
    )
    weight: float = Field(1.0, description="Weight of this reward in the sum.")
    model: str | None = Field(
        None, description="reward_model: an exported reward model dir; judge: a VLM path or name."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Reward-specific settings (see the reward's docstring)."
    )

    @model_validator(mode="after")
    def _model_given(self) -> RewardSpec:
        if catalog.REWARDS[self.name].needs_model and not self.model:
            raise ValueError(f"model: reward {self.name!r} needs a model (path or name)")
        return self


class RolloutConfig(Section):
    """Where responses are generated and how the policy's weights reach the generator."""

    placement: Literal["local", "ray"] = Field(
        "local",
        description="local: each training worker generates with its own policy; ray: Ray "
        "rollout actors (policy copies) that receive the LoRA weights through the object store "
        "after each sync, with a parity check (a process without Ray starts a local Ray).",
    )
    num_workers: int = Field(
        1, ge=1, description="Rollout actors per training rank (placement: ray)."
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per rollout actor.")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per rollout actor.")
    sync_every: int = Field(
        1, ge=1, description="Optimizer steps between weight syncs to the rollout actors."
    )
    parity_tolerance: float = Field(
        1e-4,
        gt=0,
        description="Max |log-prob| difference of a probe sample, trainer vs rollout actor.",
    )
    merge_adapters: bool = Field(
        True,
        description="Generate with the LoRA adapters merged into the base weights (PEFT's "
        "merge; the exact base weights are restored after, at the cost of holding a copy of the "
        "adapted ones meanwhile): no per-token adapter path. Ignored under ZeRO-3.",
    )
    share_prefill: bool = Field(
        True,
        description="Prefill each prompt (image included) once and continue its n samples from "
        "copies of that KV cache, instead of prefilling every sample.",
    )


class GrpoMethod(_MethodBase):
    """Online RL on prompts: n samples per prompt, rewards, advantages, clipped policy updates."""

    name: Literal["grpo"] = Field("grpo", description="Training method.")
    loss: _losses("grpo") = Field(
        "grpo", description="Loss variant: " + ", ".join(catalog.losses_for("grpo")) + "."
    )
    num_generations: int = Field(4, ge=2, description="Samples per prompt (the group size).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the rollouts.")
    max_new_tokens: int = Field(24, ge=1, description="Tokens generated per response.")
    epsilon_low: float = Field(0.2, ge=0, description="Lower clip range of the ratio.")
    epsilon_high: float = Field(
        0.2, ge=0, description="Upper clip range of the ratio (DAPO's clip-higher: 0.28)."
    )
    kl_coef: float = Field(0.0, ge=0, description="Weight of the KL to the reference.")
    kl_estimator: Literal["k3", "k1"] = Field("k3", description="KL estimator per token.")
    kl_in_reward: bool = Field(
        False, description="Fold the KL into the reward (RLOO style) instead of the loss."
    )
    advantage: Literal["auto", "group_normalized", "centered", "leave_one_out"] = Field(
        "auto", description="Advantage estimator; auto: the loss's own (grpo: group_normalized)."
    )
    epochs: int = Field(1, ge=1, description="Policy epochs over each rollout batch (mu).")
    mini_batch_size: int | None = Field(
        None, ge=1, description="Responses per update micro-batch (default: the whole rollout)."
    )
    filter_ties: bool = Field(
        False, description="Drop groups whose rewards all tie (DAPO dynamic sampling), counted."
    )
    overlong_cache: int = Field(
        0, ge=0, description="DAPO soft overlong penalty window in tokens (0: off)."
    )
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="refusal_rule")],
        description="Rewards and their weights.",
    )
    reward_combine: Literal["weighted", "normalized"] = Field(
        "weighted",
        description="weighted: sum of weight x reward; normalized: each reward standardized "
        "over the batch first (GDPO-style).",
    )
    reference: Literal["adapter_disabled", "frozen_copy", "none"] = Field(
        "adapter_disabled", description="Reference for the KL: LoRA disabled, a frozen copy, none."
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="Rollout placement and weight sync."
    )
    log_samples_every: int = Field(
        0, ge=0, description="Steps between sample-rollout tables logged to MLflow (0: never)."
    )
    pack_groups: bool = Field(
        True,
        description="Log-prob passes run one packed row per prompt [prompt, its responses] "
        "(4D mask): the prompt once per group, not once per sample (sdpa/eager attention; "
        "others fall back to one row per sample). Attention over the packed row costs "
        "(prompt + n x response)^2 with a dense [T, T] mask per group: a win when prompts are "
        "long against the responses; with long responses and large n, measure or turn it off.",
    )

    @model_validator(mode="after")
    def _reference_needed(self) -> GrpoMethod:
        if self.reference == "none" and self.kl_coef > 0:
            raise ValueError("reference: kl_coef > 0 needs a reference (not none)")
        return self


class CostSpec(Section):
    """One cost for constrained RL; every cost sees (image, prompt, response, meta)."""

    name: Literal["cost_model", "harm_rule"] = Field(
        ...,
        description="cost_model: an exported cost model (method: cost); harm_rule: 1 for "
        "complying with a harmful request (label-aware), 0 otherwise.",
    )
    model: str | None = Field(None, description="cost_model: the exported cost model directory.")
    weight: float = Field(1.0, gt=0, description="Weight of this cost in the sum.")

    @model_validator(mode="after")
    def _model_given(self) -> CostSpec:
        if self.name == "cost_model" and not self.model:
            raise ValueError("model: cost 'cost_model' needs the exported cost model directory")
        return self


class SafeRlhfMethod(GrpoMethod):
    """Constrained online RL (Safe RLHF): maximize reward s.t. E[cost | harm category k] <= its
    budget for every k, and the over-refusal rate on benign prompts <= its budget."""

    name: Literal["safe_rlhf"] = Field("safe_rlhf", description="Training method.")  # type: ignore[assignment]
    costs: list[CostSpec] = Field(
        default_factory=lambda: [CostSpec(name="harm_rule")], description="Costs, summed by weight."
    )
    budgets: dict[str, float] = Field(
        default_factory=dict,
        description="Harm category -> cost budget; categories not named use `budget`.",
    )
    budget: float = Field(0.0, description="Cost budget of a harm category not in `budgets`.")
    categories: list[str] = Field(
        default_factory=list,
        description="Harm categories with a constraint (default: those of `budgets`, else one "
        "constraint 'harmful' over every harmful prompt).",
    )
    over_refusal_budget: float | None = Field(
        0.05,
        ge=0,
        le=1,
        description="Budget of the benign over-refusal rate (null: no constraint).",
    )
    lagrangian: bool = Field(
        True, description="Learn the multipliers; false: fixed weights (the baseline)."
    )
    lambda_init: float = Field(1.0, gt=0, description="Initial multiplier of every constraint.")
    lambda_max: float = Field(10.0, gt=0, description="Maximum multiplier.")
    lambda_lr: float = Field(0.1, ge=0, description="Learning rate of the log-multipliers.")
    lambda_delay: int = Field(0, ge=0, description="Optimizer steps before the first dual update.")
    lambda_window: int = Field(
        64, ge=1, description="Episodes per constraint in the moving window of costs."
    )

    @model_validator(mode="after")
    def _lambda_range(self) -> SafeRlhfMethod:
        if self.lambda_init > self.lambda_max:
            raise ValueError(f"lambda_init: {self.lambda_init} > lambda_max {self.lambda_max}")
        return self


METHOD_SECTIONS: dict[str, type[_MethodBase]] = {
    "sft": SftMethod,
    "dpo": DpoMethod,
    "kto": KtoMethod,
    "reward": RewardMethod,
    "grpo": GrpoMethod,
    "safe_rlhf": SafeRlhfMethod,
    "cost": CostMethod,
}
assert set(METHOD_SECTIONS) == set(catalog.METHODS), "catalog and schema disagree on methods"


def _method_tag(value: Any) -> str:
    """The method a `method:` mapping names (sft when it names none)."""
    if isinstance(value, dict):
        return value.get("name", "sft")
    return getattr(value, "name", "sft")


MethodConfig = Annotated[
    Annotated[SftMethod, Tag("sft")]
    | Annotated[DpoMethod, Tag("dpo")]
    | Annotated[KtoMethod, Tag("kto")]
    | Annotated[RewardMethod, Tag("reward")]
    | Annotated[GrpoMethod, Tag("grpo")]
    | Annotated[SafeRlhfMethod, Tag("safe_rlhf")]
    | Annotated[CostMethod, Tag("cost")],
    Discriminator(_method_tag),
]
"""The `method` section: one section type per method, chosen by `method.name`."""


# Metrics the in-loop scorecard has and ranks by (it answers prompts; it scores no pairs).
INLOOP_RANKED = tuple(sorted(m for m in DIRECTION if not m.endswith("reward_accuracy")))


def _ranked_metric(metric: str) -> str:
    """`metric` when the in-loop scorecard has it and it has a direction (`<split>/<metric>` too)."""
    if metric_direction(metric) is None or metric.rsplit("/", 1)[-1] not in INLOOP_RANKED:
        raise ValueError(
            f"metric: {metric!r} is not an in-loop scorecard metric with a better direction; "
            f"use one of {', '.join(INLOOP_RANKED)} (or <split>/<metric>)"
        )
    return metric


class BestConfig(Section):
    """Which in-loop evaluation's checkpoint is exported (with train.eval_every)."""

    metric: str | None = Field(
        None,
        description="null: the latest checkpoint whose in-loop scorecard passes promotion.gates; "
        "a metric (harmful_refusal_rate, <split>/<metric>): the best by it among those passing.",
    )

    @model_validator(mode="after")
    def _known(self) -> BestConfig:
        if self.metric is not None:
            _ranked_metric(self.metric)
        return self


class EarlyStopConfig(Section):
    """End a run whose gates pass and whose target metric has stopped improving."""

    metric: str = Field(
        "harmful_refusal_rate",
        description="In-loop scorecard metric watched (its direction is the scorecard's).",
    )
    patience: int = Field(
        3, ge=1, description="In-loop evaluations without improvement before the run ends."
    )
    min_delta: float = Field(
        0.0, ge=0, description="An improvement is a change by more than this, the better way."
    )

    @model_validator(mode="after")
    def _known(self) -> EarlyStopConfig:
        _ranked_metric(self.metric)
        return self


class TrainConfig(Section):
    """The optimization loop."""

    max_steps: int = Field(100, ge=1, description="Optimizer steps to run.")
    micro_batch_size: int = Field(
        4, ge=1, description="Samples (pairs for dpo/reward) per rank per micro-step."
    )
    grad_accum: int = Field(1, ge=1, description="Micro-steps accumulated per optimizer step.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="Final lr as a fraction of the peak (cosine/linear)."
    )
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 disables).")
    seed: int = Field(0, ge=0, description="Seed of data order, dropout and LoRA init.")
    log_every: int = Field(1, ge=1, description="Steps between metric logs.")
    checkpoint_every: int = Field(
        0, ge=0, description="Steps between checkpoints (0: only at the end)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    output_dir: str = Field("runs/{name}", description="Run directory; {name} is the recipe name.")
    export: Literal["adapter", "merged", "none"] = Field(
        "adapter",
        description="What is exported at the end: the PEFT adapter, a merged model, or nothing.",
    )
    eval_every: int | None = Field(
        None,
        ge=1,
        description="Steps between in-loop scorecards (each with a checkpoint, and one at the "
        "end); null: none.",
    )
    eval_samples: int = Field(
        64, ge=1, description="Prompts per split in the in-loop scorecard (a fixed subset)."
    )
    eval_splits: list[str] | None = Field(
        None,
        description="Eval splits the in-loop scorecard scores; null: data.eval_split and the "
        "splits promotion.gates name.",
    )
    best: BestConfig = Field(
        default_factory=BestConfig,
        description="Which evaluated checkpoint is exported (with eval_every).",
    )
    early_stop: EarlyStopConfig | None = Field(
        None, description="End the run early once the gates pass and the metric stalls."
    )

    @model_validator(mode="after")
    def _early_stop_evaluates(self) -> TrainConfig:
        if self.early_stop is not None and self.eval_every is None:
            raise ValueError("early_stop: needs eval_every (the in-loop scorecard it watches)")
        return self


class EngineConfig(Section):
    """DeepSpeed engine settings."""

    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Training precision.")
    template: str | None = Field(
        None, description="DeepSpeed JSON template (default cluster/deepspeed/zero{stage}.json)."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Keys merged over the DeepSpeed config (nested dicts merge).",
    )
    offload: Literal["none", "cpu"] = Field(
        "none", description="ZeRO optimizer/param offload target."
    )


class ResourcesConfig(Section):
    """Where and on how much the run executes."""

    num_workers: int = Field(
        1, ge=1, description="Training processes (Ray workers or local ranks)."
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker.")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per worker (0: CPU training).")
    address: str | None = Field(None, description="Ray cluster address; null: a local cluster.")
    storage_path: str | None = Field(
        None,
        description="Ray Train storage for checkpoints (local folder or URI); default <output_dir>/ray.",
    )
    max_failures: int = Field(
        0, ge=-1, description="Worker failures tolerated (restart from checkpoint)."
    )


class EvalConfig(Section):
    """Safety evaluation: decoding and refusal detection."""

    data: str | None = Field(None, description="Eval shards (default: data.eval).")
    max_new_tokens: int = Field(24, ge=1, description="Tokens generated per answer.")
    batch_size: int = Field(32, ge=1, description="Prompts per generation batch.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (with do_sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (with do_sample).")
    refusal_detector: Literal["phrases", "judge"] = Field(
        "phrases", description="Refusal detection: the phrase/pattern list or a judge model."
    )
    judge_model: str | None = Field(
        None, description="Judge model path or id (refusal_detector: judge)."
    )
    max_samples: int | None = Field(
        None, ge=1, description="Evaluate at most this many prompts (per split)."
    )
    num_workers: int = Field(1, ge=1, description="Ray workers the eval set is split across.")
    splits: list[str] | None = Field(
        None,
        description="Eval splits scored, each reported apart; null: every eval split of the shard set.",
    )


class TrackingConfig(Section):
    """MLflow tracking and registry."""

    enabled: bool = Field(True, description="Log the run to MLflow.")
    uri: str | None = Field(
        None,
        description="Tracking URI; null: MLFLOW_TRACKING_URI, else the local SQLite store sqlite:///mlruns/mlflow.db.",
    )
    experiment: str = Field("vlalign", description="MLflow experiment name.")
    run_name: str | None = Field(None, description="MLflow run name (default: the recipe name).")
    registered_model: str | None = Field(
        None, description="Registry model name; null: do not register."
    )
    log_model: bool = Field(
        True, description="Log the adapter + processor as an MLflow pyfunc model."
    )


class Gate(Section):
    """One promotion gate over a scorecard metric."""

    metric: str = Field(
        ...,
        description="Scorecard metric, e.g. harmful_refusal_rate, or a split's: shift-visual/harmful_refusal_rate.",
    )
    op: Literal[">=", "<=", ">", "<"] = Field(..., description="Comparison.")
    value: float = Field(..., description="Threshold.")


class PromotionConfig(Section):
    """Safety gates a version must pass before it becomes `champion`."""

    gates: list[Gate] = Field(
        default_factory=list, description="Absolute gates over scorecard metrics."
    )
    max_regression: dict[str, float] = Field(
        default_factory=dict,
        description="key -> tolerance: must not be worse than the current champion by more. "
        "Keys: METRIC, SPLIT/METRIC, category/NAME, SPLIT/category/NAME (NAME, SPLIT may be *; "
        "the most specific key wins).",
    )
    auto: bool = Field(False, description="Try promotion automatically at the end of the run.")

    @model_validator(mode="after")
    def _regression_keys(self) -> PromotionConfig:
        problems = regression_keys.check_tolerances(self.max_regression)
        if problems:  # the first one; fixing it shows the next
            key, problem = problems[0]
            raise ValueError(f"max_regression.{key}: {problem}")
        return self


class Recipe(Section):
    """A whole vlalign recipe."""

    name: str = Field("recipe", description="Recipe name: run name and output folder.")
    description: str = Field("", description="One line shown by `vlalign ls`.")
    extends: str | None = Field(
        None,
        description="Base recipe this one extends (path relative to this file, or a shipped name).",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model to fine-tune.")
    peft: PeftConfig = Field(default_factory=PeftConfig, description="LoRA or full fine-tuning.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training and eval data.")
    method: MethodConfig = Field(
        default_factory=SftMethod, description="Method and its loss (fields depend on the method)."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimization loop.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="DeepSpeed engine.")
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig, description="Workers and devices."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Safety evaluation.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow.")
    promotion: PromotionConfig = Field(
        default_factory=PromotionConfig, description="Promotion gates."
    )

    @property
    def family(self) -> str:
        """The model family, resolved for built-ins (`auto` stays for paths until loaded)."""
        if self.model.family != "auto":
            return self.model.family
        return BUILTIN_FAMILY.get(self.model.name, "auto")

    @property
    def output_dir(self) -> str:
        """train.output_dir with {name} filled in."""
        return self.train.output_dir.replace("{name}", self.name)
