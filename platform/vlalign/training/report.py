"""The run's report figures drawn from its per-step metrics (rank 0, at the end of training).

`constraint_curves`: for a constrained method (Safe RLHF), every Lagrange multiplier
(`lagrange/lambda/<k>`) and every constraint value against its budget
(`lagrange/constraint/<k>`, `lagrange/budget/<k>`) over the steps, one panel each.
"""

from __future__ import annotations

from pathlib import Path

LAMBDA, CONSTRAINT, BUDGET = "lagrange/lambda/", "lagrange/constraint/", "lagrange/budget/"


def constraint_curves(history: list[dict[str, float]], path: str | Path) -> Path | None:
    """Write the multipliers and constraints of `history` (one metrics dict per step, step 1
    first) to a PNG at `path`; None when no step has Lagrange metrics."""
    names = sorted({k.removeprefix(LAMBDA) for m in history for k in m if k.startswith(LAMBDA)})
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(1, len(history) + 1))
    fig, (ax_l, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        lam = [m.get(LAMBDA + name) for m in history]
        ax_l.plot([s for s, v in zip(steps, lam, strict=True) if v is not None],
                  [v for v in lam if v is not None], label=name)  # fmt: skip
        con = [m.get(CONSTRAINT + name) for m in history]
        line = ax_c.plot([s for s, v in zip(steps, con, strict=True) if v is not None],
                         [v for v in con if v is not None], label=name)  # fmt: skip
        budget = next((m[BUDGET + name] for m in history if BUDGET + name in m), None)
        if budget is not None:
            ax_c.axhline(budget, linestyle="--", color=line[0].get_color(), linewidth=0.8)
    ax_l.set(title="Lagrange multipliers", xlabel="step", ylabel="lambda", yscale="log")
    ax_c.set(title="constraint values (dashed: budgets)", xlabel="step", ylabel="window mean")
    for ax in (ax_l, ax_c):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
