"""Process-group helpers: reuse an existing group (torchrun, Ray Train) or make a one-process one."""

from __future__ import annotations

import os
import socket

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


def ensure_process_group(device: torch.device) -> tuple[int, int]:
    """(rank, world_size) of the current group, creating a 1-process gloo/nccl group if none.

    DeepSpeed needs a process group even for one process; the rendezvous variables are set here
    only when nothing launched us (they are the torch.distributed protocol, not settings).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" not in os.environ:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
        )
    import deepspeed

    for lock in clear_stale_extension_locks():
        print(f"vlalign: removed a stale torch-extension build lock {lock}", flush=True)
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
