"""A writer killed (SIGKILL) mid-write never leaves a manifest that lists a missing or partial
shard: a new set has no manifest; a set whose split was being replaced keeps its old split,
whole and readable, until the new one is complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from data_pipeline.manifest import MANIFEST, load_manifest
from data_pipeline.synth import synthesize
from data_pipeline.validate import validate

WRITER = textwrap.dedent(
    """
    import sys, time
    from PIL import Image
    from data_pipeline.schemas import Meta, PreferenceRecord
    from data_pipeline.writer import ShardSetWriter, encode_png
    png = encode_png(Image.new("RGB", (8, 8)))
    with ShardSetWriter(sys.argv[1], max_samples=2, overwrite=True) as w:
        for i in range(10_000):
            rec = PreferenceRecord(prompt="p", chosen="c", rejected="r", meta=Meta(source="t"))
            w.write("train", rec, [png], f"k{i}")
            print(i, flush=True)
            time.sleep(0.01)
    """
)


def _kill_after(out, n: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        for line in proc.stdout:
            if int(line) >= n:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_killed_writer_leaves_no_listed_partial_shard(tmp_path):
    out = tmp_path / "new"
    _kill_after(out, 6)
    assert list(out.glob("train-*.tar"))  # complete shards were renamed into place...
    assert not (out / MANIFEST).exists()  # ...but nothing lists them

    old = tmp_path / "old"
    synthesize(old, pairs=8, seed=0, eval_pairs=4, shift_pairs=0, shard_samples=3)
    before = load_manifest(old)
    _kill_after(old, 6)  # replacing "train" in an existing set
    assert load_manifest(old) == before  # the old train split is still the listed one
    report = validate(str(old))
    assert report.ok and report.samples == 8 + 4
