"""A torch-extension build lock left by a killed process is cleared; a fresh one is kept."""

from __future__ import annotations

import os
import time

from vlalign.training.distributed import clear_stale_extension_locks


def test_stale_lock_removed_fresh_lock_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "py311_cpu" / "other_op" / "lock"
    for p in (stale, fresh):
        p.parent.mkdir(parents=True)
        p.touch()
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert clear_stale_extension_locks(max_age_s=600) == [str(stale)]
    assert not stale.exists() and fresh.exists()
