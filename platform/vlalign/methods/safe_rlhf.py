"""Safe RLHF for VLMs: constrained online RL on the GRPO machinery.

Maximize reward subject to E[cost | harm category k] <= budget_k for every constrained
category, and to the over-refusal rate on benign prompts <= its budget (so safety cannot be
bought with refusals). Everything of `methods/grpo.py` is reused (rollouts, rewards, the policy
losses, resume); what differs is the advantage (`advantages`):

    A_reward  = the loss's advantage of the rewards (group-normalized for grpo)
    A_cost    = the same estimator over the costs (cost models and/or the harm rule)
    A_refusal = the same over the refusal indicator (1 refused, 0 answered) of benign rows
    A         = (A_reward - lambda_k A_cost - rho A_refusal) / (1 + lambda_k + rho)

with lambda_k the multiplier of the row's harm category (0 for benign rows and categories
without a constraint) and rho the over-refusal multiplier on benign rows
(`vlalign.losses.lagrange.combined_advantage`). After each rollout every rank's episode costs
are gathered, appended to the per-constraint moving windows, and after the optimizer step the
dual step moves each log-multiplier by lr * (window mean - budget) (`LagrangeMultipliers`).
Multipliers and windows travel in the checkpoint, so a resumed run continues with the same
lambdas. `lagrangian: false` keeps the lambdas fixed (the fixed-weight baseline).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vlalign.config.schema import SafeRlhfMethod
from vlalign.errors import VlalignError
from vlalign.losses.lagrange import OVER_REFUSAL, LagrangeMultipliers, combined_advantage
from vlalign.methods.base import Run
from vlalign.methods.grpo import Grpo
from vlalign.rollout.engine import Rollout
from vlalign.rollout.rewards import RewardModelReward, RewardSample, harmful_label
from vlalign.safety.refusal import PhraseRefusalDetector
from vlalign.safety.validity import text_validity

HARMFUL = "harmful"  # the one constraint when no categories are named


class HarmRule:
    """Label-aware cost: 1 for answering (not refusing) a harmful request, 0 otherwise; a
    degenerate answer to a harmful request also costs 1 (it did not refuse). -> [N]."""

    def __init__(self) -> None:
        self.detector = PhraseRefusalDetector()

    def __call__(self, samples: list[RewardSample]) -> Tensor:
        refused = self.detector.is_refusal([s.response for s in samples])
        out = []
        for s, r in zip(samples, refused, strict=True):
            harmful = harmful_label(s.meta)
            valid = text_validity(s.response).valid
            out.append(1.0 if harmful and not (r and valid) else 0.0)
        return torch.tensor(out, dtype=torch.float32)


def _gather(values: list) -> list:
    """Every rank's list, concatenated in rank order (one process: the list itself)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]


class SafeRlhf(Grpo):
    """Batches: prompts. The GRPO step with Safe RLHF's combined advantage."""

    def __init__(self, cfg: SafeRlhfMethod) -> None:
        super().__init__(cfg)
        self.cfg: SafeRlhfMethod = cfg
        categories = cfg.categories or list(cfg.budgets) or [HARMFUL]
        self.by_category = categories != [HARMFUL] or HARMFUL in cfg.budgets
        self.multipliers = LagrangeMultipliers(
            {k: cfg.budgets.get(k, cfg.budget) for k in categories},
            over_refusal_budget=cfg.over_refusal_budget,
            lr=cfg.lambda_lr,
            init_lambda=cfg.lambda_init,
            max_lambda=cfg.lambda_max,
            delay=cfg.lambda_delay,
            window=cfg.lambda_window,
            lagrangian=cfg.lagrangian,
        )
        self.cost_fns: list[tuple[object, float]] = []
        self.refusals = PhraseRefusalDetector()
        self._dual_due = False

    def prepare(self, run: Run) -> nn.Module:
        """GRPO's preparation, plus the costs (cost models loaded once)."""
        module = super().prepare(run)
        for spec in self.cfg.costs:
            if spec.name == "cost_model":
                fn = RewardModelReward(spec.model, max_length=run.recipe.data.max_length)
            else:
                fn = HarmRule()
            self.cost_fns.append((fn, spec.weight))
        return module

    def _category(self, meta: dict) -> str | None:
        """The constraint a harmful row counts for (None: benign or unconstrained)."""
        if not harmful_label(meta):
            return None
        if not self.by_category:
            return HARMFUL
        cat = meta.get("category")
        return cat if cat in self.multipliers.categories else None

    def advantages(
        self,
        rewards: Tensor,
        ro: Rollout,
        rows_of: list[dict],
        seen: list[RewardSample],
        sums: dict[str, float],
    ) -> Tensor:
        """Safe RLHF's combined advantage [N]; records this rollout's episode costs."""
        n = ro.n
        device = rewards.device
        costs = torch.zeros(len(seen), dtype=torch.float32)
        for fn, weight in self.cost_fns:
            c = fn(seen).float().cpu()
            if c.shape != costs.shape:
                raise VlalignError(f"a cost returned shape {tuple(c.shape)} for {len(seen)}")
            costs += weight * c
        refused = torch.tensor(
            [float(r) for r in self.refusals.is_refusal([s.response for s in seen])]
        )
        categories = [self._category(s.meta) for s in seen]
        benign = torch.tensor([harmful_label(s.meta) is False for s in seen])
        episodes = [
            (cat, float(c)) for cat, c in zip(categories, costs.tolist(), strict=True) if cat
        ]
        episodes += [
            (OVER_REFUSAL, float(r))
            for b, r in zip(benign.tolist(), refused.tolist(), strict=True)
            if b and self.cfg.over_refusal_budget is not None
        ]
        for name, value in _gather(episodes):
            self.multipliers.record(name, [value])
        self._dual_due = True
        sums["cost/sum"] = float(costs.sum())
        sums["cost/sqsum"] = float((costs**2).sum())
        reward_adv = self.advantage_fn(rewards, n)
        cost_adv = self.advantage_fn(costs.to(device), n)
        refusal_adv = self.advantage_fn(refused.to(device), n)
        index = self.multipliers.category_index(categories).to(device)
        return combined_advantage(
            reward_adv,
            cost_adv,
            index,
            self.multipliers.lambda_tensor().to(device),
            refusal_adv=refusal_adv if self.cfg.over_refusal_budget is not None else None,
            refusal_mask=benign.to(device),
            refusal_lambda=self.multipliers.refusal_lambda,
        )

    def after_step(self, step: int) -> dict[str, float]:
        """The dual step once per rollout (after its first update); multipliers every step."""
        out = super().after_step(step)
        if self._dual_due:
            self._dual_due = False
            out.update(self.multipliers.update(step))
        else:
            out.update(self.multipliers.metrics())
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "lagrange": self.multipliers.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "lagrange" in state:
            self.multipliers.load_state_dict(state["lagrange"])


METHOD = SafeRlhf
