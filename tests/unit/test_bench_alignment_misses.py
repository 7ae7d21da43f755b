"""bench/alignment_misses.py: a study's wrong decisions joined with the records' meta."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import alignment_misses  # noqa: E402

from data_pipeline.images import TRAIN_SCALE  # noqa: E402
from data_pipeline.reader import iter_samples  # noqa: E402
from data_pipeline.synth import synthesize  # noqa: E402


@pytest.mark.parametrize(
    ("scale", "bucket"),
    [
        (TRAIN_SCALE[0] - 0.01, "small"),
        (TRAIN_SCALE[0], "train"),
        (TRAIN_SCALE[1], "train"),
        (TRAIN_SCALE[1] + 0.01, "large"),
        (None, "?"),
    ],
)
def test_size_bucket(scale, bucket):
    assert alignment_misses.size_bucket(scale) == bucket


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A study directory as bench/alignment_seeds.py leaves it: one seed's data and one stage's
    rows, where every harmful prompt of shift-visual is answered and one benign one refused."""
    out = tmp_path_factory.mktemp("study")
    data = out / "data-0-8-shift6"
    synthesize(data, pairs=8, seed=0, eval_pairs=4, shift_pairs=6)
    rows = []
    for split in ("eval", "shift-visual"):
        for i, s in enumerate(iter_samples(str(data), split, images=False)):
            harmful = s["label"] == "harmful"
            refused = (split == "eval" and harmful) or (
                split == "shift-visual" and not harmful and i == 1
            )
            rows.append(
                {
                    "split": split,
                    "index": i,
                    "key": s["key"],
                    "label": s["label"],
                    "refused": refused,
                    "answer": "I'm sorry." if refused else "Sure.",
                }
            )
    (out / "s0" / "eval-dpo").mkdir(parents=True)
    (out / "s0" / "eval-dpo" / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return out


def test_misses_join_rows_with_meta(study):
    found = alignment_misses.study_misses(study, ["sft", "dpo"], None)
    shifted = [m for m in found if m["split"] == "shift-visual"]
    metas = {
        s["key"]: s["meta"]
        for s in iter_samples(str(next(study.glob("data-*"))), "shift-visual", images=False)
    }
    harmful = [k for k, m in metas.items() if m["harmful"]]
    assert sorted(m["key"] for m in shifted if m["label"] == "harmful") == sorted(harmful)
    benign = [m for m in shifted if m["label"] == "benign"]
    assert len(benign) == 1  # the one benign prompt refused
    for m in shifted:
        meta = metas[m["key"]]
        assert (m["seed"], m["stage"], m["cue"], m["background"]) == (
            0,
            "dpo",
            meta["cue"],
            meta["background"],
        )
        assert m["size"] == alignment_misses.size_bucket(meta["cue_scale"])
        assert m["size"] != "train"  # the visual shift draws outside the training range
    # the held-out split had no wrong decision: harmful refused, benign answered
    assert [m for m in found if m["split"] == "eval"] == []


def test_cli_prints_tables_and_writes_json(study, tmp_path):
    out_json = tmp_path / "misses.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "alignment_misses.py"), str(study), "--json", str(out_json)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert "== shift-visual" in proc.stdout and "dpo harm" in proc.stdout
    found = json.loads(out_json.read_text())
    n_harmful = sum(1 for m in found if m["label"] == "harmful")
    # the "cue" table's harmful column sums to the harmful misses
    cue_table = proc.stdout.split("cue ")[1]
    counts = [int(line.split()[2]) for line in cue_table.splitlines()[1:] if line.strip()]
    assert sum(counts) == n_harmful > 0
