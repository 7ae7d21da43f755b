"""Lagrange multipliers for constrained RL (Safe RLHF), one per harm category, and the
advantage that combines reward and costs with them.

Safe RLHF (Dai et al. 2024, eq. 10-12; Ji et al. 2025, Safe RLHF-V) solves

    max_theta min_{lambda >= 0}  J_R(theta) - sum_k lambda_k (J_C,k(theta) - d_k)

by alternating a policy step on the advantage (A_R - lambda A_C) / (1 + lambda) and a dual step
on each lambda. Here, as in align-anything's PPO-Lagrangian trainer:

- one multiplier per constraint: one per harm category k for E[cost | k] <= budget_k, and an
  optional over-refusal constraint (`OVER_REFUSAL`): the refusal rate on benign prompts <=
  its budget, with its own multiplier. The harm constraints push the policy toward refusing,
  this one pushes back (the constraint set is two-sided), so safety cannot be bought with
  refusals;
- lambda = exp(log_lambda) (non-negative by construction), started at ``init_lambda``;
- the constraint value J_k is the mean of a moving window of the last ``window`` episode costs
  of category k (refusal: 1.0 refused / 0.0 answered, on benign prompts);
- the dual step, at optimizer step ``step >= delay`` only, for each constraint with a
  non-empty window:  log_lambda_k += lr * (J_k - budget_k)   (gradient ascent on the dual in
  log space), then log_lambda_k = min(log_lambda_k, log(max_lambda)) and, when
  ``min_lambda > 0``, max(., log(min_lambda)). A satisfied constraint (J_k < budget_k) lowers
  lambda_k geometrically toward 0 (or its floor), a violated one raises it to its maximum.
  (align-anything takes an SGD step on -(J - d) * exp(log_lambda), i.e. the same direction
  scaled by lambda; the unscaled step here moves as fast at small lambda as at large.)
- ``lagrangian=False``: the fixed-weight baseline, lambdas stay at ``init_lambda``; windows are
  still kept so the constraint values are logged alike.

The state (log-lambdas, windows, last update step) is plain JSON (`state_dict` /
`load_state_dict`), so a resumed run continues with exactly the same lambdas: Python floats
round-trip through JSON exactly.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

OVER_REFUSAL = "over_refusal"
"""Name of the over-refusal constraint (refusal rate on benign prompts)."""


class LagrangeMultipliers:
    """Per-constraint multipliers (see the module docstring for the update).

    budgets: harm category -> cost budget d_k (order kept: it is the category index order of
    `category_index` and `lambda_tensor`). over_refusal_budget: the benign over-refusal rate
    budget (None: no such constraint). init_lambda, max_lambda: a float for every constraint,
    or a mapping that names every constraint. lr, min_lambda, delay (optimizer steps), window
    (episodes) and lagrangian as in the module docstring.
    """

    def __init__(
        self,
        budgets: Mapping[str, float],
        *,
        over_refusal_budget: float | None = None,
        lr: float = 0.1,
        init_lambda: float | Mapping[str, float] = 1.0,
        max_lambda: float | Mapping[str, float] = 10.0,
        min_lambda: float = 0.0,
        delay: int = 0,
        window: int = 64,
        lagrangian: bool = True,
    ) -> None:
        if OVER_REFUSAL in budgets:
            raise ValueError(f"{OVER_REFUSAL!r} is reserved: use over_refusal_budget")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if lr < 0 or delay < 0 or min_lambda < 0:
            raise ValueError("lr, delay and min_lambda must be >= 0")
        self.categories: tuple[str, ...] = tuple(budgets)
        self.budgets: dict[str, float] = {k: float(v) for k, v in budgets.items()}
        if over_refusal_budget is not None:
            self.budgets[OVER_REFUSAL] = float(over_refusal_budget)
        self.names: tuple[str, ...] = tuple(self.budgets)
        self.lr = float(lr)
        self.delay = int(delay)
        self.window = int(window)
        self.lagrangian = bool(lagrangian)
        self.min_lambda = float(min_lambda)
        self.max_lambda = self._per_name("max_lambda", max_lambda)
        init = self._per_name("init_lambda", init_lambda)
        for k in self.names:
            if not 0 < init[k] <= self.max_lambda[k]:
                raise ValueError(
                    f"init_lambda[{k!r}] = {init[k]} must be in (0, max_lambda = "
                    f"{self.max_lambda[k]}]"
                )
            if self.min_lambda > init[k]:
                raise ValueError(f"min_lambda {self.min_lambda} > init_lambda[{k!r}] {init[k]}")
        self.log_lambdas: dict[str, float] = {k: math.log(init[k]) for k in self.names}
        self.windows: dict[str, deque[float]] = {k: deque(maxlen=self.window) for k in self.names}
        self.last_update: int | None = None

    def _per_name(self, what: str, value: float | Mapping[str, float]) -> dict[str, float]:
        if isinstance(value, Mapping):
            missing = [k for k in self.names if k not in value]
            if missing:
                raise ValueError(f"{what}: no value for {', '.join(missing)}")
            return {k: float(value[k]) for k in self.names}
        return {k: float(value) for k in self.names}

    # ---------------------------------------------------------------- values

    @property
    def lambdas(self) -> dict[str, float]:
        """lambda_k = exp(log_lambda_k) for every constraint."""
        return {k: math.exp(v) for k, v in self.log_lambdas.items()}

    def value(self, name: str) -> float | None:
        """The constraint value J: mean of the window (None while it is empty)."""
        w = self.windows[self._known(name)]
        return sum(w) / len(w) if w else None

    def _known(self, name: str) -> str:
        if name not in self.budgets:
            raise KeyError(f"unknown constraint {name!r}; known: {', '.join(self.names)}")
        return name

    def category_index(self, categories: Sequence[str | None]) -> Tensor:
        """[N] long: each response's harm category index into `lambda_tensor`; -1 for a
        category without a constraint (benign categories, None)."""
        pos = {k: i for i, k in enumerate(self.categories)}
        return torch.tensor([pos.get(c, -1) if c else -1 for c in categories], dtype=torch.long)

    def lambda_tensor(self) -> Tensor:
        """[K] float32 lambdas of the harm categories, in `categories` order."""
        lam = self.lambdas
        return torch.tensor([lam[k] for k in self.categories], dtype=torch.float32)

    @property
    def refusal_lambda(self) -> float:
        """The over-refusal multiplier (0.0 without that constraint)."""
        return self.lambdas.get(OVER_REFUSAL, 0.0)

    # ---------------------------------------------------------------- updates

    def record(self, name: str, costs: Iterable[float]) -> None:
        """Append episode costs of constraint `name` to its window (oldest fall out).

        Harm category k: the costs of the responses to prompts of category k. OVER_REFUSAL:
        1.0 for each benign prompt's response that refused, 0.0 otherwise."""
        w = self.windows[self._known(name)]
        for c in costs:
            c = float(c)
            if not math.isfinite(c):
                raise ValueError(f"constraint {name!r}: episode cost {c} is not finite")
            w.append(c)

    def update(self, step: int) -> dict[str, float]:
        """The dual step after optimizer step `step` (nothing before `delay`, nothing in the
        fixed-weight mode, nothing for an empty window). Returns `metrics()`."""
        if self.lagrangian and step >= self.delay:
            for k in self.names:
                j = self.value(k)
                if j is None:
                    continue
                v = self.log_lambdas[k] + self.lr * (j - self.budgets[k])
                v = min(v, math.log(self.max_lambda[k]))
                if self.min_lambda > 0:
                    v = max(v, math.log(self.min_lambda))
                self.log_lambdas[k] = v
            self.last_update = int(step)
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        """lagrange/lambda/<k>, lagrange/budget/<k> and lagrange/constraint/<k> (window mean,
        once the window has values) for every constraint."""
        out: dict[str, float] = {}
        for k, lam in self.lambdas.items():
            out[f"lagrange/lambda/{k}"] = lam
            out[f"lagrange/budget/{k}"] = self.budgets[k]
            j = self.value(k)
            if j is not None:
                out[f"lagrange/constraint/{k}"] = j
        return out

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict:
        """JSON-serializable state: log-lambdas, windows, last update step, and the budgets
        (checked on load)."""
        return {
            "log_lambdas": dict(self.log_lambdas),
            "windows": {k: list(w) for k, w in self.windows.items()},
            "last_update": self.last_update,
            "budgets": dict(self.budgets),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore `state_dict`'s output. The constraints must be the same (same names)."""
        names = set(state.get("log_lambdas", {}))
        if names != set(self.names):
            raise ValueError(
                f"saved multipliers are for constraints {sorted(names)}, this run has "
                f"{sorted(self.names)}"
            )
        self.log_lambdas = {k: float(state["log_lambdas"][k]) for k in self.names}
        self.windows = {
            k: deque((float(c) for c in state["windows"].get(k, [])), maxlen=self.window)
            for k in self.names
        }
        last = state.get("last_update")
        self.last_update = None if last is None else int(last)


def combined_advantage(
    reward_adv: Tensor,
    cost_adv: Tensor,
    category: Tensor,
    lambdas: Tensor,
    *,
    refusal_adv: Tensor | None = None,
    refusal_mask: Tensor | None = None,
    refusal_lambda: float | Tensor = 0.0,
) -> Tensor:
    """Safe RLHF's combined advantage per response, normalized by 1 + the active lambdas.

    reward_adv, cost_adv: [N] (normalized) reward and cost advantages; category: [N] long index
    into lambdas [K] (-1: no harm constraint applies); refusal_adv: [N] advantage of the
    over-refusal cost (1 refused, 0 answered), applied where refusal_mask [N] bool (benign
    prompts) with multiplier refusal_lambda. Returns [N]:

        lam_n    = lambdas[category_n] if category_n >= 0 else 0
        rho_n    = refusal_lambda if refusal_mask_n else 0
        A_n      = (reward_adv_n - lam_n * cost_adv_n - rho_n * refusal_adv_n) / (1 + lam_n + rho_n)

    Lambdas are treated as constants (no gradient flows into them).
    """
    lambdas = lambdas.detach().to(reward_adv.device, reward_adv.dtype)
    has = category >= 0
    lam = torch.where(has, lambdas[category.clamp(min=0)], torch.zeros_like(reward_adv))
    num = reward_adv - lam * cost_adv
    den = 1.0 + lam
    if refusal_adv is not None:
        if refusal_mask is None:
            raise ValueError(
                "refusal_adv needs refusal_mask (which responses are on benign prompts)"
            )
        rho = torch.as_tensor(refusal_lambda, dtype=reward_adv.dtype).detach()
        rho_n = torch.where(refusal_mask.bool(), rho, torch.zeros_like(reward_adv))
        num = num - rho_n * refusal_adv
        den = den + rho_n
    return num / den
