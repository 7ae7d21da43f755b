"""The two implementations `bench/grpo_step.py` times: vlalign's GRPO and TRL's GRPOTrainer.

One GRPO step = rollout (n samples per prompt with KV-cached `generate`, rewards, advantages)
then update (policy forward on the rollout, clipped loss, backward, `optimizer.step()`). Both
sides train LoRA adapters on the same base weights (separate copies), the same exact target
modules (`vlalign.models.lora.lora_targets`: the LM's projections), rank, alpha, learning rate,
with a plain `torch.optim.AdamW` over the trainable parameters (no DeepSpeed, no clipping, no
schedule), on the same prompts (`data_pipeline.synth` samples: image + request + harmful label),
with n samples per prompt, max_new_tokens, temperature 1, top-p 1, no KL (beta 0), clip 0.2,
the per-sequence token-mean loss ("grpo" on both) and group-normalized advantages.

- vlalign: `vlalign.methods.grpo.Grpo` built from `GrpoMethod(...)`, `prepare(Run(...))`,
  `setup(model)`; rollout = `expand(batch)` on a `collate_prompts` batch (the engine: vision tower
  once per prompt, one batched `generate`, old-policy log-probs in one forward with response-only
  logits and chunked log-probs, rewards `refusal_rule` seeing image, prompt, response and meta);
  update = `step(piece)` + backward of loss_sum / count + `optimizer.step()`.
- TRL: `trl.GRPOTrainer(model, reward_funcs=[refusal_reward], args=GRPOConfig(...),
  train_dataset=..., processing_class=processor, peft_config=LoraConfig(...))`, no vLLM;
  rollout = `trainer._generate_and_score_completions(rows)` on the B prompts repeated n times
  (what its RepeatSampler feeds it), update = `trainer.compute_loss` + `accelerator.backward` +
  `optimizer.step()` (what `training_step` does after `_prepare_inputs`, which would generate
  again). TRL's reward is a text-only callable wrapping vlalign's `RefusalRule` on
  (response, harmful label): the same rule, without the image, which the rule never reads.
  With one generation per optimizer step and one iteration, TRL skips the old-policy log-prob
  forward (old = new.detach(): on-policy); vlalign's engine always runs it (the ratio is then 1
  too). The "+ on-policy old log-probs" row measures vlalign with the same shortcut.

TRL is a bench-only dependency (`pip install -e .[bench]`); it is imported only here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import tempfile
from dataclasses import dataclass

import torch

ONE_CHUNK = 1 << 30  # a log-prob "chunk" larger than any batch: chunking off


@dataclass(frozen=True)
class Variant:
    """One vlalign configuration of the ablation table (all switches bench-side)."""

    name: str
    label: str
    share_vision: bool = True  # vision tower once per prompt (else once per sample and forward)
    response_only: bool = True  # logits only from the first response position on
    chunked: bool = True  # log-probs in chunks of positions
    skip_old_forward: bool = False  # on-policy: old log-probs = the update's (TRL's shortcut)
    merge_lora: bool = True  # generate with LoRA merged (method.rollout.merge_adapters)
    pack_groups: bool = True  # log-prob passes: one packed row per prompt (method.pack_groups)
    share_prefill: bool = True  # generate: one prefill per prompt (method.rollout.share_prefill)


VARIANTS = (
    Variant("vlalign", "vlalign Grpo, all on"),
    Variant("no_share_vision", "  - vision tower once per prompt", share_vision=False),
    Variant("no_response_only", "  - response-only logits", response_only=False),
    Variant("no_chunking", "  - chunked log-probs (one chunk)", chunked=False),
    Variant("no_merge", "  - LoRA merged for generate", merge_lora=False),
    Variant("no_share_prefill", "  - prompt prefilled once per group", share_prefill=False),
    Variant("no_pack", "  - prompt once per group (packed rows)", pack_groups=False),
    Variant("skip_old", "  + on-policy old log-probs (no fwd) = default", skip_old_forward=True),
    Variant(
        "naive", "  all off", share_vision=False, response_only=False, chunked=False,
        merge_lora=False, pack_groups=False, share_prefill=False,
    ),
)  # fmt: skip
VARIANT_NAMES = tuple(v.name for v in VARIANTS)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, dtype: torch.dtype):
    """bf16 autocast on CUDA for bf16 runs (what Accelerate does for TRL); nothing otherwise."""
    if device == "cuda" and dtype == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synth_prompts(batch: int, image_size: int, seed: int = 0) -> list[dict]:
    """`batch` decoded prompt samples from `data_pipeline.synth` (harmful/benign twins, in turn):
    key, prompt, images [PIL], meta (category, harmful, ...)."""
    from data_pipeline.synth import _meta, _twin

    out: list[dict] = []
    i = 0
    while len(out) < batch:
        for cue, image, t in _twin(seed, "train", i, image_size):
            if len(out) < batch:
                out.append(
                    {
                        "key": f"train-{i:06d}-{'h' if cue.harmful else 'b'}",
                        "prompt": t["prompt"],
                        "images": [image],
                        "meta": _meta(cue, t, i).model_dump(),
                    }
                )
        i += 1
    return out


def length_reward(texts: list[str], weight: float) -> list[float]:
    """Tie-breaker: -weight x characters / 10 per response (a random model's responses tie on
    the refusal rule, which would give all-zero advantages and no gradient)."""
    return [-weight * len(t) / 10 for t in texts]


def lora_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the LoRA weights (to check that a side trained)."""
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if "lora_" in n and p.requires_grad
    }


def lora_change(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> float:
    """Largest absolute change of any LoRA weight since `before`."""
    now = dict(model.named_parameters())
    return max(float((now[n].detach() - b).abs().max()) for n, b in before.items())


# ----------------------------------------------------------------------------- vlalign switches
def _per_owner_images(images: dict, counts: list[int], owners: list[int]) -> dict:
    """The image tensors of the rows whose prompts are `owners` (per-image dim 0; Qwen2-VL's
    flattened patches split by image_grid_thw)."""
    grid = images.get("image_grid_thw")
    n_images = sum(counts)
    out = {}
    for k, v in images.items():
        sizes = grid.prod(-1).tolist() if (grid is not None and k != "image_grid_thw") else None
        per_image = list(v.split(sizes)) if sizes else list(v.split(1))
        assert len(per_image) == n_images, (k, len(per_image), n_images)
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)
        out[k] = torch.cat([x for p in owners for x in per_image[starts[p] : starts[p + 1]]])
    return out


_VISION_STATE: dict = {}


@contextlib.contextmanager
def switches(v: Variant):
    """Patch vlalign's engine for one variant (restored on exit; the default path unpatched).

    share_vision False: every forward that would reuse the per-prompt features (generate's
    prefill, the old-log-prob forward, the update forward) runs the vision tower on its rows'
    own images instead (what passing pixel_values per sample costs). response_only False: the
    engine's first-scored position (the packed rows' first kept position) is 0, so logits are
    computed at every position."""
    import vlalign.rollout.engine as eng
    import vlalign.rollout.group_packing as gp

    saved = {k: getattr(eng, k) for k in ("encode_images", "features_for_rows", "_first_scored")}
    saved_start = gp._logits_start
    state = _VISION_STATE  # the last rollout's model and prompt images (read by its update)
    if not v.share_vision:
        real_encode = saved["encode_images"]

        def encode(model, images):
            state["model"], state["images"] = model, images
            return real_encode(model, images)

        def per_row(features, counts, owners):
            pix = _per_owner_images(state["images"], list(counts), list(owners))
            return real_encode(state["model"], pix)

        eng.encode_images, eng.features_for_rows = encode, per_row
    if not v.response_only:
        eng._first_scored = lambda labels: 0
        gp._logits_start = lambda prefix_lens: 0
    try:
        yield
    finally:
        for k, f in saved.items():
            setattr(eng, k, f)
        gp._logits_start = saved_start


class VlalignSide:
    """vlalign's Grpo on a PEFT model; every variant shares the model and the optimizer."""

    def __init__(self, setup, args):
        from data_pipeline.collate import collate_prompts
        from vlalign.config.schema import GrpoMethod, PeftConfig, Recipe, RewardSpec, TrainConfig
        from vlalign.methods.base import Run
        from vlalign.methods.grpo import Grpo
        from vlalign.models import apply_peft

        self.device, self.dtype = setup.device, setup.dtype
        self.model = apply_peft(
            setup.model, PeftConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=0.0)
        )
        pad = setup.processor.tokenizer.pad_token_id
        self.batch = collate_prompts(setup.prompts, pad)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        self.trainable = sum(p.numel() for p in params)
        self.methods = {}
        for chunk in (args.chunk_size, ONE_CHUNK):
            cfg = GrpoMethod(
                num_generations=args.n,
                max_new_tokens=args.max_new_tokens,
                temperature=1.0,
                top_p=1.0,
                kl_coef=0.0,
                loss="grpo",
                logprob_chunk=chunk,
                rewards=[RewardSpec(name="refusal_rule")],
            )
            recipe = Recipe(method=cfg, train=TrainConfig(seed=0))
            m = Grpo(cfg)
            run = Run(
                recipe=recipe,
                model=self.model,
                built=setup.built,
                encoder=None,
                pad_id=pad,
                one_epoch=lambda kind: iter(()),
                device=torch.device(self.device),
            )
            m.setup(m.prepare(run))
            # The ablations below compare against the rollout WITH its old log-prob forward;
            # `method: grpo` skips that forward on policy by default (the "skip_old" row).
            m.generator.settings = dataclasses.replace(m.generator.settings, old_logps=True)
            if args.length_weight:  # the same tie-breaker on both sides (weight 1 inside)
                m.rewards["length"] = lambda ss, w=args.length_weight: torch.tensor(
                    length_reward([s.response for s in ss], w)
                )
                m.weights["length"] = 1.0
            self.methods[chunk == ONE_CHUNK] = m
        self.chunk = args.chunk_size
        self.before = lora_snapshot(self.model)

    def rollout(self, v: Variant) -> list[dict]:
        """expand(batch): rollout + rewards + advantages -> update pieces."""
        self._configure(v)
        return self._rollout(v)

    def _configure(self, v: Variant) -> None:
        """method.rollout.merge_adapters / share_prefill and method.pack_groups as the
        variant says."""
        for m in self.methods.values():
            m.generator.settings = dataclasses.replace(
                m.generator.settings,
                merge_adapters=v.merge_lora,
                pack_groups=v.pack_groups,
                share_prefill=v.share_prefill,
            )
            m.cfg = m.cfg.model_copy(update={"pack_groups": v.pack_groups})

    def _rollout(self, v: Variant) -> list[dict]:
        method = self.methods[not v.chunked]
        with switches(v), autocast(self.device, self.dtype):
            if v.skip_old_forward:
                import vlalign.rollout.engine as eng

                real = eng.rollout_logps
                eng.rollout_logps = lambda model, ro, rows, *a, **k: torch.zeros(
                    (len(rows), ro.input_ids.shape[1]), dtype=torch.float32
                )
                try:
                    return method.expand(self.batch)
                finally:
                    eng.rollout_logps = real
            return method.expand(self.batch)

    def update(self, v: Variant, pieces: list[dict]) -> dict:
        """step + backward per piece, then one optimizer step."""
        self._configure(v)
        method = self.methods[not v.chunked]
        loss, count, resp = 0.0, 0.0, 0.0
        with switches(v), autocast(self.device, self.dtype):
            for piece in pieces:
                p = piece["piece"]
                if v.skip_old_forward:  # on-policy: old log-probs are the update's, detached
                    real = method._token_logps

                    def token_logps(model, ro, rows, pixels, grad, _real=real):
                        out = _real(model, ro, rows, pixels, grad)
                        ro.old_logps[rows] = out.detach()
                        return out

                    method._token_logps = token_logps
                try:
                    out = method.step(piece)
                finally:
                    method.__dict__.pop("_token_logps", None)
                (out.loss_sum / max(out.count, 1.0)).backward()
                loss += float(out.loss_sum.detach())
                count += out.count
                resp += float(p.rollout.response_mask[p.rows].sum())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss / max(count, 1.0), "completion_tokens": resp}

    def trained(self) -> float:
        return lora_change(self.model, self.before)


class TrlSide:
    """TRL's GRPOTrainer on its own copy of the base model, stepped by hand (see module doc)."""

    def __init__(self, setup, base_model: torch.nn.Module, targets: list[str], args):
        import trl
        from datasets import Dataset
        from peft import LoraConfig
        from trl import GRPOConfig, GRPOTrainer

        from vlalign.rollout.rewards import RefusalRule, RewardSample

        self.version = trl.__version__
        self.device, self.dtype = setup.device, setup.dtype
        rule = RefusalRule()

        def refusal_reward(prompts, completions, harmful, **kwargs) -> list[float]:
            """vlalign's refusal_rule on (response text, harmful label): text-only."""
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            seen = [
                RewardSample(images=[], prompt="", response=t.strip(), meta={"harmful": h})
                for t, h in zip(texts, harmful, strict=True)
            ]
            return rule(seen).tolist()

        def length(prompts, completions, **kwargs) -> list[float]:
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return length_reward([t.strip() for t in texts], args.length_weight)

        rows = [
            {
                "images": p["images"],
                "prompt": [{"role": "user", "content": p["prompt"]}],
                "harmful": p["meta"]["harmful"],
            }
            for p in setup.prompts
        ]
        B, n = len(rows), args.n
        self._tmp = tempfile.TemporaryDirectory(prefix="vlalign-bench-trl-grpo-")
        cfg = GRPOConfig(
            output_dir=self._tmp.name,
            per_device_train_batch_size=B * n,  # one optimizer step = B prompts x n samples
            gradient_accumulation_steps=1,
            steps_per_generation=1,
            num_iterations=1,
            num_generations=n,
            max_completion_length=args.max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            beta=0.0,
            epsilon=0.2,
            loss_type="grpo",
            scale_rewards="group",
            learning_rate=args.lr,
            bf16=self.device == "cuda" and self.dtype == torch.bfloat16,
            use_cpu=self.device == "cpu",
            gradient_checkpointing=False,
            report_to="none",
            logging_steps=10**9,
            save_strategy="no",
            eval_strategy="no",
            dataloader_num_workers=0,
            log_completions=False,
            seed=0,
        )
        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=0.0,
            target_modules=targets,
            bias="none",
        )
        self.trainer = GRPOTrainer(
            model=base_model,
            reward_funcs=[refusal_reward, length] if args.length_weight else [refusal_reward],
            args=cfg,
            train_dataset=Dataset.from_list(rows),
            processing_class=setup.processor,
            peft_config=lora,
        )
        examples = [copy.copy(r) for r in self.trainer.train_dataset]
        self.inputs = [ex for ex in examples for _ in range(n)]  # what RepeatSampler yields
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        self.model, self.optimizer = self.trainer.accelerator.prepare(self.trainer.model, optimizer)
        self.trainer.current_gradient_accumulation_steps = 1
        self.before = lora_snapshot(self.model)

    def rollout(self) -> dict:
        self.model.train()  # TRL's "train" mode
        return self.trainer._generate_and_score_completions([dict(x) for x in self.inputs])

    def update(self, out: dict) -> dict:
        from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

        self.model.train()
        inputs = unsplit_pixel_values_by_grid(split_pixel_values_by_grid(out))
        with self.trainer.compute_loss_context_manager():
            loss = self.trainer.compute_loss(self.model, inputs)
        self.trainer.accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": float(loss.detach()),
            "completion_tokens": float(out["completion_mask"].sum()),
        }

    def trained(self) -> float:
        return lora_change(self.model, self.before)
