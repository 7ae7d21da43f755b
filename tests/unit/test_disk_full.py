"""A full disk (ENOSPC, simulated in-process) while writing shards or a checkpoint: the error
names the path, nothing half-written is listed, and the previous checkpoint stays `latest`."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from data_pipeline.manifest import MANIFEST, load_manifest
from data_pipeline.synth import synthesize
from vlalign.errors import DataError, VlalignError
from vlalign.training import checkpoint as ckpt


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_synth_into_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import webdataset as wds

    out = tmp_path / "synth"
    calls = {"n": 0}
    real_write = wds.TarWriter.write

    def write_then_fill(self, obj):  # the disk fills after 5 samples
        calls["n"] += 1
        if calls["n"] > 5:
            _enospc()
        return real_write(self, obj)

    monkeypatch.setattr(wds.TarWriter, "write", write_then_fill)
    with pytest.raises(DataError) as e:
        synthesize(out, pairs=16, seed=0, eval_pairs=4, shard_samples=2)
    msg = str(e.value)
    assert "No space left on device" in msg and str(out) in msg and ".tar.tmp-" in msg
    assert not out.exists()  # a new folder that holds nothing complete is removed


def test_synth_overwrite_into_a_full_disk_keeps_the_old_set(tmp_path, monkeypatch):
    out = tmp_path / "synth"
    synthesize(out, pairs=8, seed=0, eval_pairs=4, shard_samples=3)
    before = load_manifest(out)
    import data_pipeline.manifest as manifest

    monkeypatch.setattr(manifest, "atomic_write", _enospc)  # the manifest write fails last
    with pytest.raises(DataError, match=rf"{MANIFEST}: cannot write: No space left"):
        synthesize(out, pairs=10, seed=1, eval_pairs=4, shard_samples=3, overwrite=True)
    monkeypatch.undo()
    assert load_manifest(out) == before  # the old set is intact and still the listed one
    listed = {s.name for sp in before.splits.values() for s in sp.shards}
    assert {p.name for p in out.glob("*.tar")} == listed  # the new, unlisted shards are gone


class _Engine:
    """Just enough of a DeepSpeed engine for checkpoint.save: writes one state file."""

    def save_checkpoint(self, path: str, tag: str, save_latest: bool) -> None:
        d = Path(path) / tag
        d.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.zeros(2)}, d / "mp_rank_00_model_states.pt")


def test_checkpoint_into_a_full_disk_keeps_latest(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    first = ckpt.save(_Engine(), root, ckpt.TrainerState(step=1), rank=0, world_size=1, keep=2)
    assert ckpt.latest(root) == first

    real_save = torch.save

    def full(obj, f, *a, **k):
        if "rng-rank" in str(f):
            _enospc()
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(VlalignError) as e:
        ckpt.save(_Engine(), root, ckpt.TrainerState(step=2), rank=0, world_size=1, keep=2)
    msg = str(e.value)
    assert str(root / ".tmp-step-000002") in msg and "No space left on device" in msg
    assert f"previous checkpoint {first} is intact" in msg
    assert ckpt.latest(root) == first
    assert not (root / ".tmp-step-000002").exists() and not (root / "step-000002").exists()
    assert json.loads((first / "trainer_state.json").read_text())["step"] == 1
