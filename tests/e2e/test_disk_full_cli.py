"""A full disk, for real, through the `vlalign` command (fresh processes, clean working
directories): the output goes to a small tmpfs mounted for the test, so writes fail with the
kernel's ENOSPC wherever they happen (a shard, a manifest, torch.save, DeepSpeed's files).

- `vlalign data synth` into a filesystem too small for the set: exit 2, one `error:` line
  naming the temp shard file and "No space left on device"; the new folder is removed.
- `vlalign data synth --overwrite` of a set that fits with one that does not: exit 2; the old
  set is still the listed one, whole (`vlalign data validate` passes), no new shard left.
- `vlalign run --no-ray` whose output directory fills up after two checkpoints: exit 2, one
  line naming the checkpoint's temp folder and the previous checkpoint, which is intact and
  still `latest`; with room again, the same command resumes from it and finishes.

Mounting needs root (CAP_SYS_ADMIN): the tests skip, saying so, only where `mount` is refused;
CI (`.ci/run`) runs as root, where they run. The in-process versions (ENOSPC simulated at one
call) are tests/unit/test_disk_full.py. Cases are listed in BAD_INPUT_CASES.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_bad_input import assert_clear_error, run_vlalign

pytestmark = pytest.mark.slow

NO_SPACE = "No space left on device"


@pytest.fixture
def small_fs(tmp_path):
    """mount(size) -> the root of a new tmpfs of that size (e.g. "128k"); unmounted after."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no `mount` command here: a small filesystem cannot be made")
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            refused = os.geteuid() != 0 or any(
                m in proc.stderr.lower()
                for m in ("permission denied", "not permitted", "must be superuser")
            )
            if refused:
                pytest.skip(f"mounting a tmpfs needs root / CAP_SYS_ADMIN: {proc.stderr.strip()}")
            raise AssertionError(f"mount -t tmpfs failed: {proc.stderr}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _clean_cwd(tmp_path: Path) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd


def test_synth_into_a_full_disk(small_fs, tmp_path):
    fs = small_fs("128k")
    out = fs / "synth"
    args = ["data", "synth", str(out), "--pairs", "64", "--eval-pairs", "16"]
    proc = run_vlalign([*args, "--shard-samples", "8", "--quiet"], _clean_cwd(tmp_path))
    text = assert_clear_error(proc, f"{out}/.train-", ".tar.tmp-", NO_SPACE)
    assert len(text.strip().splitlines()) == 1, text
    assert list(fs.iterdir()) == []  # the new folder held nothing complete: removed


def test_synth_overwrite_into_a_full_disk_keeps_the_old_set(small_fs, tmp_path):
    fs = small_fs("128k")
    out = fs / "set"
    cwd = _clean_cwd(tmp_path)
    small = ["--pairs", "4", "--eval-pairs", "2", "--shift-pairs", "0", "--shard-samples", "2"]
    first = run_vlalign(["data", "synth", str(out), *small, "--quiet"], cwd)
    assert first.returncode == 0, first.stderr[-2000:]
    manifest = (out / "manifest.json").read_text()
    files = sorted(p.name for p in out.iterdir())

    big = ["--pairs", "64", "--eval-pairs", "16", "--seed", "1", "--shard-samples", "8"]
    proc = run_vlalign(["data", "synth", str(out), *big, "--overwrite", "--quiet"], cwd)
    assert_clear_error(proc, str(out), NO_SPACE)
    assert (out / "manifest.json").read_text() == manifest  # the old set is still the listed one
    assert sorted(p.name for p in out.iterdir()) == files  # no new shard or temp file left
    check = run_vlalign(["data", "validate", str(out), "--quiet"], cwd)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]


STEPS = 6


def test_checkpoint_into_a_full_disk_keeps_latest(small_fs, tmp_path, model_cache):
    from data_pipeline.synth import synthesize

    shards = tmp_path / "shards"
    synthesize(shards, pairs=32, seed=0, eval_pairs=4)
    fs = small_fs("4m")  # a tiny-model checkpoint is ~1.7 MB: two fit, the third does not
    out = fs / "run"
    root = out / "checkpoints"
    cwd = _clean_cwd(tmp_path)
    args = [
        "run", "tiny/sft", "--no-ray", "--no-eval",
        f"data.train={shards}", f"train.output_dir={out}", f"model.cache_dir={model_cache}",
        f"train.max_steps={STEPS}", "train.checkpoint_every=1", f"train.keep_checkpoints={STEPS}",
        "train.micro_batch_size=4", "train.warmup_steps=1", "tracking.enabled=false",
    ]  # fmt: skip
    proc = run_vlalign(args, cwd, timeout=900)
    kept = (root / "latest").read_text().strip()  # what `latest` names after the failure
    k = int(kept.split("-")[1])
    assert 1 <= k < STEPS, f"latest is {kept}: did the checkpoint size change? resize the fs"
    text = assert_clear_error(
        proc,
        f"checkpoint {root}/.tmp-step-{k + 1:06d}: cannot write ({NO_SPACE}",
        f"the previous checkpoint {root}/{kept} is intact",
    )
    assert len(text.strip().splitlines()) == 1, text
    assert sorted(p.name for p in root.iterdir()) == [
        "latest",
        *(f"step-{s:06d}" for s in range(1, k + 1)),
    ]  # the temp folder is gone, nothing half-written is listed
    state = json.loads((root / kept / "trainer_state.json").read_text())
    assert state["step"] == k and len(state["losses"]) == k

    # With room again, the same command resumes from the kept checkpoint and finishes.
    subprocess.run(["mount", "-o", "remount,size=64m", str(fs)], check=True)
    again = run_vlalign(args, cwd, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"from checkpoint {kept} (step {k} of {STEPS})" in again.stdout
    assert f"{STEPS - k} steps this run (step {STEPS} of {STEPS})" in again.stdout
    final = json.loads((root / f"step-{STEPS:06d}" / "trainer_state.json").read_text())
    assert final["losses"][:k] == state["losses"]
