"""Shifted eval splits of the synthetic set: each is disjoint from training in the way its name
says (visual: cue size, background, clutter, colour; wording: a disjoint bank of requests), the
cues keep their meanings, and `vlalign data synth` writes them (fresh subprocess)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from data_pipeline.converters import convert
from data_pipeline.images import CUES, TRAIN_SCALE
from data_pipeline.manifest import load_manifest
from data_pipeline.reader import iter_samples
from data_pipeline.synth import EVAL_WORDINGS, PROMPTS, SHIFTS, TRAIN_PARAPHRASES, synthesize
from vlalign.errors import DataError

ROOT = Path(__file__).resolve().parents[2]


def _norm(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c == " ").split())


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("shifts") / "ds"
    synthesize(out, pairs=60, seed=2, eval_pairs=36)
    return {split: list(iter_samples(str(out), split)) for split in ("train", "eval", *SHIFTS)}, out


def _train_wordings(train: list[dict]) -> set[str]:
    return {_norm(s["prompt"]) for s in train} | {_norm(p) for s in train for p in s["paraphrases"]}


def test_banks_are_disjoint_and_train_records_carry_paraphrases(synth):
    splits, _ = synth
    train_bank = {_norm(p) for p in PROMPTS} | {_norm(p) for t in TRAIN_PARAPHRASES for p in t}
    eval_bank = {_norm(p) for t in EVAL_WORDINGS for p in t}
    n_train = sum(1 + len(t) for t in TRAIN_PARAPHRASES)
    assert len(train_bank) == n_train and len(eval_bank) == len(PROMPTS) * 2
    assert all(len(t) >= 8 for t in TRAIN_PARAPHRASES)  # varied enough to learn to ignore
    assert not train_bank & eval_bank
    for s in splits["train"]:
        assert s["paraphrases"] == list(TRAIN_PARAPHRASES[s["meta"]["template"]])
    assert not _train_wordings(splits["train"]) & eval_bank


def test_each_shift_departs_from_training_as_named(synth):
    splits, out = synth
    train = splits["train"]
    lo, hi = TRAIN_SCALE
    assert all(lo <= s["meta"]["cue_scale"] <= hi for s in train + splits["eval"])
    assert {s["meta"]["background"] for s in train + splits["eval"]} == {"plain"}
    seen = _train_wordings(train)
    manifest = load_manifest(out)
    assert manifest.splits["eval"].shift is None and manifest.splits["train"].shift is None
    for split, (visual, wording) in SHIFTS.items():
        rows = splits[split]
        assert len(rows) == 36 and manifest.splits[split].shift == split.removeprefix("shift-")
        scales = [s["meta"]["cue_scale"] for s in rows]
        backgrounds = {s["meta"]["background"] for s in rows}
        if visual:  # every cue outside the training size range, never the training background
            assert all(x < lo or x > hi for x in scales)
            assert min(scales) < lo and max(scales) > hi  # both smaller and larger occur
            assert "plain" not in backgrounds and len(backgrounds) > 1
        else:
            assert all(lo <= x <= hi for x in scales) and backgrounds == {"plain"}
        prompts = {_norm(s["prompt"]) for s in rows}
        if wording:  # no request was ever seen in training, as prompt or as paraphrase
            assert not prompts & seen
        else:
            assert prompts <= {_norm(p) for p in PROMPTS}
        for s in rows:  # same six cues, same meanings
            cue = CUES[s["meta"]["cue"]]
            assert s["label"] == ("harmful" if cue.harmful else "benign")
            assert s["category"] == cue.category
        assert {s["meta"]["cue"] for s in rows} == set(CUES)


def test_no_shifted_image_is_a_training_image(synth):
    splits, _ = synth

    def hashes(split):
        return {hashlib.sha256(s["images"][0].tobytes()).hexdigest() for s in splits[split]}

    train = hashes("train")
    for split in ("eval", *SHIFTS):
        assert not hashes(split) & train, split


def test_convert_marks_a_split_shift(tmp_path):
    buf = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf)
    rows = [{"image": "a.png", "prompt": "p?", "label": "benign", "category": "c"}]
    (tmp_path / "ev.jsonl").write_text(json.dumps(rows[0]) + "\n")
    convert("jsonl", tmp_path / "ev.jsonl", tmp_path / "out", split="noleak", shift="no-leak")
    convert("jsonl", tmp_path / "ev.jsonl", tmp_path / "out", split="eval")
    m = load_manifest(tmp_path / "out")
    assert m.splits["noleak"].shift == "no-leak" and m.splits["eval"].shift is None


def test_cli_synth_writes_the_shifted_splits(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}"}
    exe = str(Path(sys.executable).parent / "vlalign")

    def run(*args):
        return subprocess.run(
            [exe, "data", "synth", *args, "--quiet"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = run("ds", "--pairs", "8", "--eval-pairs", "4")
    assert r.returncode == 0, r.stderr
    for split in SHIFTS:
        assert split in r.stdout
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert {k: (v["kind"], v["samples"], v["shift"]) for k, v in m["splits"].items()} == {
        "train": ("preference", 8, None),
        "eval": ("eval", 4, None),
        "shift-visual": ("eval", 4, "visual"),
        "shift-wording": ("eval", 4, "wording"),
        "shift-both": ("eval", 4, "both"),
    }
    r = run("ds2", "--pairs", "8", "--eval-pairs", "4", "--shift-pairs", "0")
    assert r.returncode == 0, r.stderr
    assert set(json.loads((tmp_path / "ds2" / "manifest.json").read_text())["splits"]) == {
        "train",
        "eval",
    }
    r = run("ds3", "--pairs", "8", "--shift-pairs", "1")
    assert r.returncode == 2 and "shift_pairs" in r.stderr and "Traceback" not in r.stderr


def test_eval_wordings_need_a_list_per_template(tmp_path):
    with pytest.raises(DataError, match="non-empty list for each of 6 templates"):
        synthesize(tmp_path / "a", pairs=4, eval_pairs=2, eval_wordings=EVAL_WORDINGS[:5])
    with pytest.raises(DataError, match="non-empty list for each of 6 templates"):
        synthesize(tmp_path / "b", pairs=4, eval_pairs=2, eval_wordings=[*EVAL_WORDINGS[:5], ()])
