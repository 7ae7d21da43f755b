"""DeepSpeed's CPU communication op: JIT-built once per machine, so build it where a person sees it.

On CPU, DeepSpeed compiles a small shared-memory comm op (ShareMemCommBuilder) at its first
initialisation on a machine (45 s to 2 min with g++/ninja) and caches it under
TORCH_EXTENSIONS_DIR. Inside Ray workers that minute passes in silence; a driver can check the
cache first and build the op itself, behind a status line, so the workers then load it at once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CPU_COMM_BUILDER = "ShareMemCommBuilder"
CPU_COMM_OP = "deepspeed_shm_comm"


def op_cache_dir(name: str = CPU_COMM_OP) -> Path:
    """The folder torch builds (and caches) extension `name` in."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def cpu_comm_op_built() -> bool:
    """Whether the CPU comm op is already compiled in this machine's extension cache."""
    return (op_cache_dir() / f"{CPU_COMM_OP}.so").is_file()


def build_cpu_comm_op() -> float:
    """Compile (or load) the CPU comm op now; returns the seconds it took. The compiler's output
    goes to this process's stdout/stderr."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator

    from vlalign.training.distributed import clear_stale_extension_locks

    clear_stale_extension_locks()
    t0 = time.perf_counter()
    get_accelerator().create_op_builder(CPU_COMM_BUILDER).load()
    return time.perf_counter() - t0
