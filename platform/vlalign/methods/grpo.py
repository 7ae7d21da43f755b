"""Online RL for VLMs: the GRPO family and RLOO (the loss chosen by name), rewards that see the image.

One data batch holds P prompts (any record kind: prompt, images, meta). `expand` turns it into
the micro-batches the loop trains on:

1. rollout: n samples per prompt from the current policy (`vlalign.rollout.engine`), seeded by
   (train.seed, rollout index, prompt key, sample index) so a resumed run regenerates the same
   samples; the image is encoded once per prompt and its features serve every sample and the
   old-policy and reference log-prob passes;
2. rewards: every reward sees (image, prompt, response, meta) (`vlalign.rollout.rewards`),
   combined by weights or normalized then summed; the KL may be folded into the reward;
   DAPO's overlong penalty is added when set;
3. advantages: the loss's own estimator (group-normalized, centered, leave-one-out) or the
   recipe's; groups whose rewards all tie can be dropped (counted);
4. `epochs` passes over the rollout in micro-batches of `mini_batch_size` responses.

`step` computes the policy's token log-probs on one micro-batch and the policy loss (a SUM over
the loss's unit, sequences or tokens, with its count, as every method returns). Checkpoints fall
between rollouts (the loop's rule), so a resumed run continues with exactly the same samples.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlalign.config.schema import GrpoMethod
from vlalign.errors import VlalignError
from vlalign.losses import LOSSES
from vlalign.losses.policy import (
    ADVANTAGES,
    POLICY_LOSSES,
    dapo_group_filter,
    kl_penalized_rewards,
    means_from_sums,
    overlong_penalty,
)
from vlalign.methods.base import Run, StepOutput, frozen_copy
from vlalign.models.pair_inputs import encode_images, image_inputs, vision_is_trainable
from vlalign.models.unwrap import unwrap
from vlalign.rollout.backend import RolloutBackend, build_backend
from vlalign.rollout.engine import (
    GenerationEngine,
    Rollout,
    SamplingSettings,
    rollout_logps,
)
from vlalign.rollout.rewards import RewardError, RewardFn, RewardSample, build_reward, score
from vlalign.rollout.weights import AdapterUpdate, Probe, adapter_state, make_probe, probe_logprobs


@dataclass
class _Piece:
    """Rows of one rollout that form one update micro-batch."""

    rollout: Rollout
    rows: Tensor  # [M] row indices into the rollout
    advantages: Tensor  # [M]
    ref_logps: Tensor | None  # [M, T] or None
    pixels: dict[str, Tensor]  # the prompts' image tensors (to re-encode a trainable tower)
    sums: dict[str, float]  # rollout metrics, carried by the rollout's first piece only


class Grpo:
    """Batches: prompts. Units: the loss's (sequences or tokens)."""

    batch_kind = "prompts"

    def __init__(self, cfg: GrpoMethod) -> None:
        self.cfg = cfg
        self.spec = POLICY_LOSSES[cfg.loss]
        assert LOSSES[cfg.loss].fn is self.spec.fn
        adv = self.spec.advantage if cfg.advantage == "auto" else cfg.advantage
        self.advantage_fn = ADVANTAGES[adv]
        self.model: nn.Module | None = None
        self.frozen_ref: nn.Module | None = None
        self.generator: GenerationEngine | None = None
        self.backend: RolloutBackend | None = None  # placement local or ray (rollout.backend)
        self.probe: Probe | None = None  # the parity probe (placement ray)
        self.synced: int | None = None  # the weights version the rollout actors hold
        self.step_done = 0  # the last optimizer step seen by after_step
        self.pending_sync: dict[str, float] = {}  # metrics of a sync made before a rollout
        self.zero_stage = 0
        self.rewards: dict[str, RewardFn] = {}
        self.weights: dict[str, float] = {}
        self.rollouts_done = 0  # seeds the samples; saved in the checkpoint
        # One update per rollout over all of it: the old log-probs are the update's own
        # (detached), so the rollout skips their forward (TRL does the same on policy).
        self.on_policy = cfg.epochs == 1 and cfg.mini_batch_size is None and not cfg.kl_in_reward
        self.seed = 0
        self.image_token_id = -1

    # -- the Method protocol ---------------------------------------------------------------
    def prepare(self, run: Run) -> nn.Module:
        """The generator (placement local: this worker's own policy; ray: rollout actors, see
        `vlalign.rollout.backend`), the parity probe, the reference, rewards."""
        c = self.cfg
        self.seed = run.recipe.train.seed
        if c.reference == "frozen_copy":
            self.frozen_ref = frozen_copy(run.model)
        elif (
            c.reference == "adapter_disabled"
            and (c.kl_coef > 0 or c.kl_in_reward)
            and not hasattr(unwrap(run.model, peft=False), "disable_adapter")
        ):
            raise VlalignError("method.reference: adapter_disabled needs peft.mode lora")
        settings = SamplingSettings(
            n=c.num_generations,
            temperature=c.temperature,
            top_p=c.top_p,
            max_new_tokens=c.max_new_tokens,
            seed=self.seed,
            logprob_chunk=c.logprob_chunk,
            old_logps=not self.on_policy,
            merge_adapters=c.rollout.merge_adapters and run.recipe.engine.zero_stage != 3,
            pack_groups=c.pack_groups,
            share_prefill=c.rollout.share_prefill,
        )
        self.generator = GenerationEngine(
            run.model,
            run.built.processor,
            run.built.family,
            settings,
            max_length=run.recipe.data.max_length,
        )
        self.image_token_id = self.generator.encoder.image_token_id
        self.zero_stage = run.recipe.engine.zero_stage
        self.backend = build_backend(run.recipe, self.generator, run.rank, run.device)
        if c.rollout.placement == "ray":
            self.probe = make_probe(
                run.built.processor, run.built.family, max_length=run.recipe.data.max_length
            )
        for spec in c.rewards:
            if spec.name in self.rewards:
                raise VlalignError(f"method.rewards: {spec.name!r} is listed twice")
            options = dict(spec.options)
            if spec.name == "reward_model":
                options["path"] = spec.model
            elif spec.name == "judge":
                options.setdefault("cache_dir", run.recipe.model.cache_dir)
                options["model_name"] = spec.model
            try:
                self.rewards[spec.name] = build_reward(spec.name, **options)
            except TypeError as e:
                raise VlalignError(f"method.rewards: {spec.name}: bad options ({e})") from None
            self.weights[spec.name] = spec.weight
        return run.model

    def setup(self, engine: nn.Module) -> None:
        self.model = engine
        self.generator.model = unwrap(engine, peft=False)  # generate with the trained weights

    def units(self, batch: dict) -> float:
        piece: _Piece = batch["piece"]
        if self.spec.unit == "tokens":
            return float(piece.rollout.response_mask[piece.rows].sum())
        return float(len(piece.rows))

    def tokens(self, batch: dict) -> int:
        piece: _Piece = batch["piece"]
        return int(piece.rollout.attention_mask[piece.rows].sum())

    def expand(self, batch: dict) -> list[dict]:
        """Rollout, rewards and advantages for the batch's prompts -> update micro-batches."""
        c = self.cfg
        samples = [
            {"key": k, "prompt": p, "images": im, "meta": m}
            for k, p, im, m in zip(
                batch["keys"], batch["prompts"], batch["images"], batch["meta"], strict=True
            )
        ]
        if self.probe is not None and self.synced is None:  # the actors get this process's
            self.pending_sync = self._sync(self.step_done)  # weights (fresh or resumed run)
        ro = self.backend.rollout(samples, step=self.rollouts_done)
        self.rollouts_done += 1
        N, n = ro.input_ids.shape[0], ro.n
        rows_of = [samples[int(p)] for p in ro.prompt_index.tolist()]
        seen = [
            RewardSample(images=list(r["images"]), prompt=r["prompt"], response=t, meta=r["meta"])
            for r, t in zip(rows_of, ro.texts, strict=True)
        ]
        try:
            total, parts, _ = score(
                self.rewards, seen, self.weights, combine=c.reward_combine, group_size=n
            )
        except RewardError as e:
            raise VlalignError(str(e)) from None
        rewards = total.to(ro.input_ids.device, torch.float32)
        sums: dict[str, float] = {}
        for name, v in parts.items():
            sums[f"reward/{name}/sum"] = float(v.float().sum())
            sums[f"reward/{name}/sqsum"] = float((v.float() ** 2).sum())
        if c.overlong_cache:
            rewards = rewards + overlong_penalty(
                ro.response_lengths, c.max_new_tokens, c.overlong_cache
            ).to(rewards.device)
        ref_logps = self._reference_logps(ro) if (c.kl_coef > 0 or c.kl_in_reward) else None
        if c.kl_in_reward:
            rewards = kl_penalized_rewards(
                rewards,
                ro.old_logps,
                ref_logps,
                ro.response_mask,
                kl_coef=c.kl_coef,
                estimator=c.kl_estimator,
            )
        advantages = self.advantages(rewards, ro, rows_of, seen, sums)
        keep = torch.ones(N, dtype=torch.bool, device=rewards.device)
        if c.filter_ties:
            f = dapo_group_filter(rewards, n)
            keep = f.keep.to(rewards.device)
            sums["groups/dropped"] = float(f.dropped_groups)
        sums.update(self._rollout_sums(ro, rewards, advantages, rows_of))
        pixels = {}
        if vision_is_trainable(self.model):  # the update re-encodes the prompts' images
            pixels = image_inputs(self.generator.prompt_batch(samples))
        rows = keep.nonzero().flatten()
        size = c.mini_batch_size or max(len(rows), 1)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rollouts_done)
        pieces: list[dict] = []
        for epoch in range(c.epochs):
            order = rows if epoch == 0 else rows[torch.randperm(len(rows), generator=gen)]
            for i in range(0, len(order), size):
                idx = order[i : i + size]
                pieces.append(
                    {
                        "piece": _Piece(
                            ro,
                            idx,
                            advantages[idx],
                            None if ref_logps is None else ref_logps[idx],
                            pixels,
                            sums if not pieces else {},
                        ),
                        "n_skipped": batch.get("n_skipped", 0) if not pieces else 0,
                    }
                )
        if not pieces:  # every group tied and was dropped: one empty update keeps the loop going
            empty = rows[:0]
            pieces.append({"piece": _Piece(ro, empty, advantages[empty], None, pixels, sums)})
        return pieces

    def step(self, batch: dict) -> StepOutput:
        """Policy loss of one micro-batch: SUM over the loss's unit, count = units."""
        p: _Piece = batch["piece"]
        c = self.cfg
        if len(p.rows) == 0:
            zero = sum(x.sum() for x in self.model.parameters() if x.requires_grad) * 0.0
            return StepOutput(loss_sum=zero, count=0.0, sums=dict(p.sums))
        rows = p.rows.tolist()
        logps = self._token_logps(self.model, p.rollout, rows, p.pixels, grad=True)
        out = self.spec.fn(
            logps,
            logps.detach() if p.rollout.old_logps is None else p.rollout.old_logps[rows],
            None if c.kl_in_reward else p.ref_logps,
            p.rollout.response_mask[rows],
            p.advantages,
            eps_low=c.epsilon_low,
            eps_high=c.epsilon_high,
            kl_coef=0.0 if c.kl_in_reward else c.kl_coef,
            max_length=c.max_new_tokens,
        )
        sums = {f"update/{k}": v for k, v in out.sums.items()}
        sums.update(p.sums)
        return StepOutput(loss_sum=out.loss, count=out.count, sums=sums)

    def metrics(self, sums: dict[str, float], count: float) -> dict[str, float]:
        """Update means (clip_frac, ratio_mean, kl, entropy) and the rollout's statistics."""
        upd = {k.removeprefix("update/"): v for k, v in sums.items() if k.startswith("update/")}
        out = means_from_sums(upd)
        rows = max(sums.get("rollout/rows", 0.0), 1.0)
        for key, total in sums.items():
            if key.endswith("/sum"):
                name = key.removesuffix("/sum")
                mean = total / rows
                sq = sums.get(f"{name}/sqsum", 0.0) / rows
                out[f"{name}/mean"] = mean
                out[f"{name}/std"] = max(sq - mean * mean, 0.0) ** 0.5
        for key in ("response_length", "advantage_abs"):
            if f"rollout/{key}" in sums:
                out[key] = sums[f"rollout/{key}"] / rows
        for label in ("harmful", "benign"):
            n_label = sums.get(f"rollout/{label}_rows", 0.0)
            if n_label:
                out[f"refusal/{label}"] = sums.get(f"rollout/{label}_refused", 0.0) / n_label
        if "groups/dropped" in sums:
            out["groups/dropped"] = sums["groups/dropped"]
        out["rollout/truncated"] = sums.get("rollout/truncated", 0.0) / rows
        return out

    def advantages(
        self,
        rewards: Tensor,
        ro: Rollout,
        rows_of: list[dict],
        seen: list[RewardSample],
        sums: dict[str, float],
    ) -> Tensor:
        """Advantages [N] of the rollout's rows from their rewards [N] (a constrained method
        overrides this to add its costs; `sums` takes extra rollout metric sums)."""
        return self.advantage_fn(rewards, ro.n)

    def after_step(self, step: int) -> dict[str, float]:
        """Placement ray: every `rollout.sync_every` steps the adapter goes to the rollout
        actors; returns the parity metrics (sync/parity_max_abs_diff, parity_ok, version)."""
        self.step_done = step
        out, self.pending_sync = self.pending_sync, {}
        if self.probe is not None and step % self.cfg.rollout.sync_every == 0:
            out = self._sync(step)
        return out

    def close(self) -> None:
        """Release the rollout actors (the loop calls this when training ends)."""
        if self.backend is not None:
            self.backend.close()

    def state_dict(self) -> dict:
        return {"rollouts_done": self.rollouts_done}

    def load_state_dict(self, state: dict) -> None:
        self.rollouts_done = int(state.get("rollouts_done", 0))

    # -- pieces ----------------------------------------------------------------------------
    def _sync(self, version: int) -> dict[str, float]:
        """The trainer's adapter (gathered under ZeRO-3) and probe log-probs -> the backend."""
        model = unwrap(self.model, peft=False)
        ctx = contextlib.nullcontext()
        if self.zero_stage == 3:
            import deepspeed

            trainable = [p for p in model.parameters() if p.requires_grad]
            ctx = deepspeed.zero.GatheredParameters(trainable, modifier_rank=None)
        with ctx:
            state = adapter_state(model)
        update = AdapterUpdate(state, version, probe_logprobs(model, self.probe))
        metrics = self.backend.sync(update)
        self.synced = version
        return metrics

    def _token_logps(
        self, model: nn.Module, ro: Rollout, rows: list[int], pixels: dict, grad: bool
    ) -> Tensor:
        """Token log-probs [M, T] of the rollout's `rows` under `model`.

        The rollout's per-prompt image features serve every row; a trainable vision path
        (LoRA on the tower or projector) re-encodes the prompts' images with grad instead."""
        feats = None
        if grad and pixels and ro.features is not None:
            feats = encode_images(model, {k: v.to(ro.input_ids.device) for k, v in pixels.items()})
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            return rollout_logps(
                model, ro, rows, self.cfg.logprob_chunk, feats, pack=self.cfg.pack_groups
            )

    def _reference_logps(self, ro: Rollout) -> Tensor:
        """The reference's token log-probs [N, T] of the whole rollout (no grad)."""
        rows = list(range(ro.input_ids.shape[0]))
        if self.frozen_ref is not None:
            ctx, model = contextlib.nullcontext(), self.frozen_ref
        else:
            ctx, model = unwrap(self.model, peft=False).disable_adapter(), self.model
        was_training = model.training
        model.eval()
        with ctx:
            out = self._token_logps(model, ro, rows, {}, grad=False)
        model.train(was_training)
        return out

    def _rollout_sums(
        self, ro: Rollout, rewards: Tensor, advantages: Tensor, rows_of: list[dict]
    ) -> dict[str, float]:
        """Sums over the rollout's rows: lengths, advantages, refusals by label."""
        from vlalign.safety.refusal import PhraseRefusalDetector

        refused = PhraseRefusalDetector().is_refusal(list(ro.texts))
        sums = {
            "rollout/rows": float(len(rows_of)),
            "reward/sum": float(rewards.sum()),
            "reward/sqsum": float((rewards**2).sum()),
            "rollout/response_length": float(ro.response_lengths.float().sum()),
            "rollout/advantage_abs": float(advantages.abs().sum()),
            "rollout/truncated": float(ro.truncated.float().sum()),
        }
        for sample, ref in zip(rows_of, refused, strict=True):
            harmful = (sample.get("meta") or {}).get("harmful")
            if harmful is None:
                continue
            label = "harmful" if harmful else "benign"
            sums[f"rollout/{label}_rows"] = sums.get(f"rollout/{label}_rows", 0.0) + 1
            sums[f"rollout/{label}_refused"] = sums.get(f"rollout/{label}_refused", 0.0) + ref
        return sums


METHOD = Grpo
