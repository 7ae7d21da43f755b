"""Process-group helpers: reuse an existing group (torchrun, Ray Train) or make a one-process one."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

import torch
import torch.distributed as dist


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


STALE_LOCK_SECONDS = 600.0


def clear_stale_extension_locks(max_age_s: float = STALE_LOCK_SECONDS) -> list[str]:
    """Remove JIT-build locks of torch extensions left by a killed process.

    DeepSpeed JIT-builds a small comm op at its first init on CPU; torch guards the build with a
    `lock` file that a killed builder never removes, after which every later run waits forever.
    A build takes about a minute, so a lock older than `max_age_s` is stale.
    """
    import glob
    import time

    from torch.utils.cpp_extension import get_default_build_root

    removed = []
    # torch's layout: $TORCH_EXTENSIONS_DIR (or its default root)/py311_cpu/<op>/lock
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    locks = glob.glob(os.path.join(root, "*", "*", "lock")) + glob.glob(
        os.path.join(root, "*", "lock")
    )
    for lock in locks:
        try:
            if time.time() - os.path.getmtime(lock) > max_age_s:
                os.remove(lock)
                removed.append(lock)
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def launcher_env(rank: int, local_rank: int, world_size: int):
    """RANK / LOCAL_RANK / WORLD_SIZE in os.environ for the duration of a DeepSpeed call that reads
    them (init, engine creation) when no launcher set them; removed again afterwards."""
    wanted = {"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world_size)}
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def ensure_process_group(device: torch.device) -> tuple[int, int]:
    """(rank, world_size) of the current group, creating a 1-process gloo/nccl group if none.

    DeepSpeed needs a process group even for one process. A launcher's group (torchrun-style
    env, Ray Train) is reused; otherwise a private loopback group is made without os.environ.
    """
    if device.type == "cpu":  # say so, rather than let DeepSpeed probe and warn on every rank
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    import deepspeed

    for lock in clear_stale_extension_locks():
        print(f"vlalign: removed a stale torch-extension build lock {lock}", flush=True)
    if "RANK" not in os.environ:
        # Nothing launched us: a private one-process group over loopback, its address handed to
        # init_process_group directly and never left in os.environ, so later subprocesses (a
        # bench, TRL/accelerate, Ray workers) do not believe they are rank 0 of a group.
        dist.init_process_group(
            backend_for(device), init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
        )
    with launcher_env(dist.get_rank() if dist.is_initialized() else 0, 0, 1):
        deepspeed.init_distributed(dist_backend=backend_for(device), verbose=False)
    return dist.get_rank(), dist.get_world_size()


def all_reduce_sum(value: float, device: torch.device) -> float:
    """Sum a python number over ranks (identity for one process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank ([obj] for one process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` (picklable) on every rank (`obj` itself for one process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
