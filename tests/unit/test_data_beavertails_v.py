"""BeaverTails-V converter on a parquet fixture in the published layout (string flags and ids):
chosen = the safer response, per-response safety flags, severity and category kept; bad rows
named; the CLI in a fresh subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipeline.converters import convert
from data_pipeline.reader import iter_samples
from data_pipeline.validate import validate
from vlalign.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buf, format="PNG")
    return buf.getvalue()


def _row(i: int, **kw) -> dict:
    row = {
        "question": f"What is happening in picture {i}?",
        "image": {"bytes": _png((10 * i, 20, 30)), "path": None},
        "category": "animal_abuse",
        "image_severity": i % 3,
        "response_1": f"answer one {i}",
        "response_2": f"answer two {i}",
        "response_1_from": "model-a",
        "response_2_from": "model-b",
        "more_helpful_response_id": "1",
        "is_response_1_safe": "False",
        "is_response_2_safe": "True",
        "safer_response_id": "2",
        "response_1_harmless_rate": -2,
        "response_2_harmless_rate": 1,
        "response_1_helpful_rate": 2,
        "response_2_helpful_rate": 1,
    }
    row.update(kw)
    return row


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def src(tmp_path) -> Path:
    """Two configs (harm categories) of the train split, as HF lays them out."""
    root = tmp_path / "BeaverTails-V"
    _write(
        root / "animal_abuse" / "train-00000-of-00001.parquet",
        [
            _row(0),
            _row(1, safer_response_id="1", is_response_1_safe="True", is_response_2_safe="False"),
        ],
    )
    _write(
        root / "dangerous_behavior" / "train-00000-of-00001.parquet",
        [
            _row(
                2,
                category="dangerous_behavior",
                is_response_1_safe="True",
                is_response_2_safe="True",
                safer_response_id="1",
                more_helpful_response_id="2",
            )
        ],
    )
    return root


def test_pairs_keep_safety_flags_severity_and_category(src, tmp_path):
    out = tmp_path / "out"
    res = convert("beavertails-v", src, out)
    assert res["kind"] == "preference" and res["samples"] == 3 and res["skipped"] == 0
    assert validate(str(out)).ok
    got = {s["prompt"]: s for s in iter_samples(str(out), "train")}
    s0, s1, s2 = (got[f"What is happening in picture {i}?"] for i in range(3))
    # row 0: response 2 is safer (safe), response 1 unsafe
    assert (s0["chosen"], s0["rejected"]) == ("answer two 0", "answer one 0")
    assert s0["meta"] == {
        "category": "animal_abuse",
        "source": "beavertails-v",
        "harmful": None,
        "image_severity": 0,
        "chosen_safe": True,
        "rejected_safe": False,
        "safer_response_id": "2",
        "more_helpful_response_id": "1",
        "chosen_more_helpful": False,
        "chosen_from": "model-b",
        "rejected_from": "model-a",
        "chosen_harmless_rate": 1,
        "rejected_harmless_rate": -2,
        "chosen_helpful_rate": 1,
        "rejected_helpful_rate": 2,
    }
    assert (s1["chosen"], s1["meta"]["chosen_safe"], s1["meta"]["rejected_safe"]) == (
        "answer one 1",
        True,
        False,
    )
    assert s1["meta"]["image_severity"] == 1 and s1["meta"]["chosen_more_helpful"] is True
    assert s2["meta"]["category"] == "dangerous_behavior"
    assert s2["meta"]["chosen_safe"] is s2["meta"]["rejected_safe"] is True
    assert s2["images"][0].size == (16, 12)


def test_eval_kind_needs_a_label(src, tmp_path):
    with pytest.raises(DataError, match="--label"):
        convert("beavertails-v", src, tmp_path / "e0", kind="eval")
    res = convert("beavertails-v", src, tmp_path / "e", kind="eval", label="harmful", split="eval")
    assert res["kind"] == "eval"
    ev = list(iter_samples(str(tmp_path / "e"), "eval", kind="eval"))
    assert {s["label"] for s in ev} == {"harmful"}
    assert all(s["reference"] == s["chosen"] and s["meta"]["harmful"] is True for s in ev)


def test_bad_rows_are_named_or_skipped(tmp_path):
    f = _write(
        tmp_path / "bad" / "train-0.parquet",
        [
            _row(0),
            _row(1, safer_response_id="3"),
            _row(2, is_response_1_safe="maybe"),
        ],
    )
    with pytest.raises(DataError, match=r"train-0.parquet row 1: safer_response_id must be"):
        convert("beavertails-v", f, tmp_path / "o1")
    res = convert("beavertails-v", f, tmp_path / "o2", on_error="skip")
    assert res["samples"] == 1 and res["skipped"] == 2
    assert "row 2: is_response_1_safe must be 'True' or 'False', got 'maybe'" in "".join(
        res["skip_reasons"]
    )


def test_a_directory_with_both_splits_is_refused(src, tmp_path):
    _write(src / "animal_abuse" / "evaluation-00000-of-00001.parquet", [_row(5)])
    with pytest.raises(DataError, match="both train and evaluation"):
        convert("beavertails-v", src, tmp_path / "o")
    res = convert(
        "beavertails-v",
        src / "animal_abuse" / "evaluation-00000-of-00001.parquet",
        tmp_path / "ev",
        split="eval",
    )
    assert res["samples"] == 1


def test_cli_converts_in_a_fresh_process(src, tmp_path):
    """`vlalign data convert --format beavertails-v SRC OUT` from a clean cwd; a bad SRC is a
    one-line error with exit code 2."""
    exe = Path(sys.executable).parent / "vlalign"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}"}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "cli-out"
    p = subprocess.run(
        [str(exe), "data", "convert", "--format", "beavertails-v", str(src), str(out)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    samples = list(iter_samples(str(out), "train"))
    assert len(samples) == 3
    assert sorted(s["meta"]["chosen_safe"] for s in samples) == [True, True, True]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["kind"] == "preference"
    bad = subprocess.run(
        [
            str(exe),
            "data",
            "convert",
            "--format",
            "beavertails-v",
            str(tmp_path / "nope"),
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2
    assert "nope" in bad.stderr and "Traceback" not in bad.stderr
