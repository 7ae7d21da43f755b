"""Splitting an evaluation across Ray workers, and merging their rows back exactly.

Worker k of N answers the samples with index i % N == k (see worker.py) as one Ray task; the
driver concatenates the rows, sorts them by index and checks that every index 0..n-1 appears
once. Metrics are computed once on the merged rows, so a 2-worker scorecard equals a 1-process
one as long as each answer does not depend on its batch (greedy decoding; pairs are scored one
answer per forward).

Ray: an existing connection is used as is; otherwise `address` (a cluster) or a fresh local
cluster (`ray.init(address="local")`, stopped afterwards). Each task asks for
`cpus_per_worker` CPUs (default: an equal share of the cluster's CPUs, at most 1, so N tasks
fit on a 2-core machine) and `gpus_per_worker` GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from vlalign.errors import VlalignError


def merge_rows(parts: Sequence[dict]) -> tuple[list[dict], str | None, int]:
    """Worker results -> (rows in index order, pair kind, skipped pairs). Checks full coverage."""
    rows = sorted((r for p in parts for r in p["rows"]), key=lambda r: r["index"])
    idx = [r["index"] for r in rows]
    if idx != list(range(len(rows))):
        dup = sorted({i for i in idx if idx.count(i) > 1})
        raise RuntimeError(
            f"merged eval rows do not cover 0..{len(rows) - 1} exactly once (duplicates: {dup[:5]})"
        )
    kinds = {p["pair_kind"] for p in parts if p["rows"]}
    if len(kinds) > 1:
        raise RuntimeError(f"workers disagree on the pair metric kind: {sorted(map(str, kinds))}")
    skipped = sum(p.get("skipped_pairs", 0) for p in parts)
    return rows, (kinds.pop() if kinds else None), skipped


def run_sharded(
    fn: Callable[..., dict],
    job,
    num_workers: int,
    *,
    address: str | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float = 0.0,
    on_done: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Run fn(job, k, num_workers) for k in 0..N-1 as Ray tasks; return their results in k order.

    `on_done(finished, total)` is called as tasks finish (progress). A VlalignError raised in a
    task is re-raised here as itself, not wrapped in Ray's error.
    """
    import ray
    from ray.exceptions import RayTaskError

    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(
                address="local",
                num_cpus=os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=True,
                configure_logging=False,
            )
        started = True
    try:
        if cpus_per_worker is None:
            total = float(ray.cluster_resources().get("CPU", 1.0))
            cpus_per_worker = min(1.0, total / num_workers)
        task = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_retries=0)(fn)
        refs = [task.remote(job, k, num_workers) for k in range(num_workers)]
        pending, done = list(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done += len(ready)
            try:
                ray.get(ready)  # surface a failure as soon as it happens
            except RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, VlalignError):
                    raise cause from None
                raise
            if on_done is not None:
                on_done(done, num_workers)
        return ray.get(refs)
    finally:
        if started:
            ray.shutdown()
