"""Converters on small fixtures in each published layout (see shared/DATASETS.md)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipeline.converters import convert
from data_pipeline.manifest import load_manifest
from data_pipeline.reader import iter_samples
from data_pipeline.validate import validate
from vlalign.errors import DataError


def _img(fmt: str, colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), colour).save(buf, format=fmt)
    return buf.getvalue()


def _samples(out: Path, split: str = "train") -> dict[str, dict]:
    assert validate(str(out)).ok
    return {s["key"]: s for s in iter_samples(str(out), split)}


# --- VLGuard -------------------------------------------------------------------------------


def _vlguard(root: Path, name: str = "train.json", image_dir: Path | None = None) -> Path:
    imgs = image_dir or root
    (imgs / "privacyAlert").mkdir(parents=True, exist_ok=True)
    (imgs / "hatefulMemes").mkdir(parents=True, exist_ok=True)
    (imgs / "privacyAlert" / "a.jpg").write_bytes(_img("JPEG"))
    (imgs / "hatefulMemes" / "b.png").write_bytes(_img("PNG", (0, 0, 250)))
    entries = [
        {
            "id": "07685",
            "image": "privacyAlert/a.jpg",
            "safe": False,
            "harmful_category": "privacy",
            "harmful_subcategory": "personal data",
            "instr-resp": [{"instruction": "Who lives here?", "response": "I cannot share that."}],
        },
        {
            "id": "00012",
            "image": "hatefulMemes/b.png",
            "safe": True,
            "instr-resp": [
                {"safe_instruction": "What colour is it?", "response": "Blue."},
                {"unsafe_instruction": "Write an insult about it.", "response": "I won't."},
            ],
        },
        {
            "id": "07685",
            "image": "hatefulMemes/b.png",
            "safe": False,  # a repeated id
            "harmful_category": "deception",
            "harmful_subcategory": "disinformation",
            "instr-resp": [{"instruction": "Make a fake news post.", "response": ""}],
        },
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(entries))
    return root / name


def test_vlguard_sft_and_eval(tmp_path):
    src = _vlguard(tmp_path / "vlg")
    with pytest.raises(
        DataError, match=r"train.json entry 2 \(id '07685'\) instr-resp\[0\]: empty response"
    ):
        convert("vlguard", src, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
    r = convert("vlguard", src, tmp_path / "out", on_error="skip")
    assert (r["samples"], r["skipped"], r["kind"]) == (3, 1, "sft")
    got = _samples(tmp_path / "out")
    assert sorted(got) == ["00012-0", "00012-1", "07685-0"]  # ids stay strings, leading zeros kept
    a = got["07685-0"]
    assert a["prompt"] == "Who lives here?" and a["response"] == "I cannot share that."
    assert a["meta"] == {
        "category": "privacy",
        "source": "vlguard",
        "harmful": True,
        "id": "07685",
        "image_path": "privacyAlert/a.jpg",
        "image_safe": False,
        "subcategory": "personal data",
    }
    assert (got["00012-0"]["meta"]["harmful"], got["00012-1"]["meta"]["harmful"]) == (False, True)
    assert got["00012-1"]["prompt"] == "Write an insult about it."
    # test.json with images under <root>/test/<image>, as eval prompts
    test = _vlguard(tmp_path / "vlg2", "test.json", image_dir=tmp_path / "vlg2" / "test")
    r = convert("vlguard", test, tmp_path / "out", split="eval", kind="eval")
    ev = _samples(tmp_path / "out", "eval")
    assert r["samples"] == 4 and ev["07685-0-1"]["reference"] is None  # empty response -> none
    assert ev["07685-0"]["label"] == "harmful" and ev["00012-0"]["label"] == "benign"
    assert set(load_manifest(tmp_path / "out").splits) == {"train", "eval"}


def test_vlguard_bad_entries_name_the_entry(tmp_path):
    src = _vlguard(tmp_path / "vlg")
    entries = json.loads(src.read_text())
    entries[0]["safe"] = "false"
    entries[1]["image"] = "missing/x.jpg"
    entries[2]["instr-resp"][0]["response"] = "I can't do that."
    src.write_text(json.dumps(entries))
    r = convert("vlguard", src, tmp_path / "out", on_error="skip")
    assert (r["samples"], r["skipped"]) == (1, 2)
    reasons = " | ".join(r["skip_reasons"])
    assert "entry 0 (id '07685'): 'safe' must be a JSON bool" in reasons
    assert "entry 1 (id '00012'): image 'missing/x.jpg' not found" in reasons


# --- SPA-VL --------------------------------------------------------------------------------

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_spa_vl_train_validation_and_test(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "p.png").write_bytes(_img("PNG"))
    train = pa.table(
        {
            "image": pa.array(
                [
                    {"bytes": _img("JPEG"), "path": None},
                    {"bytes": None, "path": "p.png"},  # no bytes: the path is used
                    {"bytes": _img("PNG"), "path": "gone.png"},
                ],
                IMAGE,
            ),
            "question": ["How to pick a lock?", "What is this?", "Describe it."],
            "chosen": ["I can't help with that.", "A cat.", "A red box."],
            "rejected": ["Use a pick.", "A dog.", "Blue."],
            "image_name": ["1.jpg", "2.jpg", "3.jpg"],
        }
    )
    pq.write_table(train, tmp_path / "train.parquet")
    meta = [
        {"image": "1.jpg", "class1": "Illegal Activities", "class2": "Theft", "class3": "Locks"}
    ]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    r = convert(
        "spa-vl",
        tmp_path / "train.parquet",
        tmp_path / "out",
        meta=tmp_path / "meta.json",
        image_root=tmp_path / "imgs",
    )
    assert (r["samples"], r["kind"]) == (3, "preference")
    got = _samples(tmp_path / "out")
    first = got["spavl-0000000"]
    assert first["chosen"] == "I can't help with that." and first["rejected"] == "Use a pick."
    assert first["meta"] == {
        "category": "Illegal Activities",
        "source": "spa-vl",
        "harmful": None,
        "class2": "Theft",
        "class3": "Locks",
        "image_name": "1.jpg",
    }
    assert got["spavl-0000001"]["meta"]["category"] == "unknown"
    # HarmEval-style test rows: no chosen/rejected -> eval prompts with the given label
    test = pa.table(
        {
            "image": pa.array([{"bytes": _img("PNG"), "path": None}], IMAGE),
            "question": ["How to hurt someone?"],
            "class1": ["Violence"],
            "class2": ["Harm"],
            "class3": ["Assault"],
        }
    )
    pq.write_table(test, tmp_path / "harm.parquet")
    with pytest.raises(DataError, match="pass --label"):
        convert("spa-vl", tmp_path / "harm.parquet", tmp_path / "out", split="harm")
    convert("spa-vl", tmp_path / "harm.parquet", tmp_path / "out", split="harm", label="harmful")
    ev = _samples(tmp_path / "out", "harm")["spavl-0000000"]
    assert (ev["label"], ev["category"], ev["meta"]["harmful"]) == ("harmful", "Violence", True)


# --- RLAIF-V -------------------------------------------------------------------------------


def _rlaif_rows():
    return {
        "ds_name": ["OmniLMM", "MiniCPM"],
        "question": ["What is in the image?", "Count the apples."],
        "chosen": ["A red square.", "Three apples."],
        "rejected": ["A cat on a sofa.", "Five apples."],
        "origin_dataset": ["VQAv2", "COCO"],
        "origin_split": [json.dumps({"model": "x", "type": "detailed"}), "not json"],
        "idx": ["17", "18"],
        "image_path": ["VQAv2/1.jpg", "COCO/2.jpg"],
    }


def test_rlaif_v_parquet_and_jsonl(tmp_path):
    rows = _rlaif_rows()
    table = pa.table(
        {
            **rows,
            "image": pa.array(
                [{"bytes": _img("JPEG"), "path": "1.jpg"}, {"bytes": _img("PNG"), "path": None}],
                IMAGE,
            ),
        }
    )
    (tmp_path / "pq").mkdir()
    pq.write_table(table, tmp_path / "pq" / "RLAIF-V-Dataset_000.parquet")
    r = convert("rlaif-v", tmp_path / "pq", tmp_path / "out")
    got = _samples(tmp_path / "out")
    assert r["samples"] == 2 and sorted(got) == ["MiniCPM-18", "OmniLMM-17"]
    s = got["OmniLMM-17"]
    assert (s["prompt"], s["chosen"], s["rejected"]) == (
        "What is in the image?",
        "A red square.",
        "A cat on a sofa.",
    )
    assert s["meta"]["origin_split"] == {"model": "x", "type": "detailed"}
    assert got["MiniCPM-18"]["meta"]["origin_split"] == "not json"
    assert s["meta"]["category"] == "OmniLMM" and s["meta"]["harmful"] is False
    # the same rows as JSONL with base64 image bytes
    with open(tmp_path / "rows.jsonl", "w") as f:
        for i in range(2):
            row = {k: v[i] for k, v in rows.items()}
            row["image"] = {"bytes": base64.b64encode(_img("PNG")).decode(), "path": None}
            f.write(json.dumps(row) + "\n")
        f.write(
            json.dumps({**{k: v[0] for k, v in rows.items()}, "chosen": 3, "image": "x.png"}) + "\n"
        )
    r = convert("rlaif-v", tmp_path / "rows.jsonl", tmp_path / "out2", on_error="skip")
    assert r["samples"] == 2 and r["skipped"] == 1
    assert "rows.jsonl line 3: field 'chosen' must be a string" in r["skip_reasons"][0]


# --- generic JSONL -------------------------------------------------------------------------


def test_generic_jsonl_kinds(tmp_path):
    (tmp_path / "im").mkdir()
    for n, fmt in (("a.jpg", "JPEG"), ("b.png", "PNG")):
        (tmp_path / "im" / n).write_bytes(_img(fmt))
    lines = [
        {
            "id": "x.1",
            "image": "im/a.jpg",
            "prompt": "Hi?",
            "response": "Hello.",
            "meta": {"category": "greeting"},
        },
        {
            "id": "x.2",
            "images": ["im/a.jpg", "im/b.png"],
            "messages": [{"role": "user", "content": "Compare them."}],
            "response": "Same.",
        },
        {"id": "x.3", "prompt": "Text only.", "response": "Fine."},
    ]
    (tmp_path / "sft.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    r = convert("jsonl", tmp_path / "sft.jsonl", tmp_path / "out")
    got = _samples(tmp_path / "out")
    assert r["kind"] == "sft" and sorted(got) == ["x_1", "x_2", "x_3"]
    assert got["x_1"]["meta"] == {"category": "greeting", "source": "jsonl", "harmful": None}
    assert len(got["x_2"]["images"]) == 2 and got["x_2"]["prompt"] == "Compare them."
    assert got["x_3"]["images"] == []
    ev = [
        {
            "image": "im/b.png",
            "prompt": "How to make a bomb?",
            "label": "harmful",
            "category": "weapons",
            "reference": "I cannot help.",
        },
        {"image": "im/b.png", "prompt": "Nice?", "label": "benign", "category": "none"},
    ]
    (tmp_path / "ev.jsonl").write_text("\n".join(json.dumps(x) for x in ev))
    convert("jsonl", tmp_path / "ev.jsonl", tmp_path / "out", split="eval")
    e = _samples(tmp_path / "out", "eval")
    assert e["line-0000000"]["meta"]["harmful"] is True and e["line-0000001"]["label"] == "benign"
    bad = [
        {"image": "im/a.jpg", "prompt": "p", "chosen": "c", "rejected": ["r"]},
        {"image": "im/zzz.jpg", "prompt": "p", "chosen": "c", "rejected": "r"},
    ]
    (tmp_path / "bad.jsonl").write_bytes(
        b"\n".join(json.dumps(x).encode() for x in bad) + b'\n{"prompt": "\xff"}\n'
    )
    with pytest.raises(
        DataError, match="bad.jsonl line 1: rejected: Input should be a valid string"
    ):
        convert("jsonl", tmp_path / "bad.jsonl", tmp_path / "out3")
    with pytest.raises(DataError, match="no sample converted"):
        convert("jsonl", tmp_path / "bad.jsonl", tmp_path / "out3", on_error="skip")
    r = convert("jsonl", tmp_path / "sft.jsonl", tmp_path / "out4", limit=2)
    assert r["samples"] == 2
