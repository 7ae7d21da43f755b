"""Shard writer, manifest and record schemas: bounds, hashes, digests, atomicity, round trip."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
from PIL import Image

from data_pipeline.manifest import MANIFEST, load_manifest
from data_pipeline.reader import iter_samples
from data_pipeline.schemas import (
    EvalRecord,
    Meta,
    PreferenceRecord,
    SFTRecord,
    parse_record,
    sanitize_key,
)
from data_pipeline.writer import ShardSetWriter, encode_png
from vlalign.errors import DataError


def _png(colour=(10, 200, 30), size=(8, 6)) -> bytes:
    return encode_png(Image.new("RGB", size, colour))


def _jpeg(colour=(200, 10, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (9, 7), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _pairs(n: int) -> list[tuple[str, PreferenceRecord, list[bytes]]]:
    out = []
    for i in range(n):
        rec = PreferenceRecord(
            prompt=f"prompt {i} é",
            chosen=f"chosen {i}",
            rejected=f"rejected {i}",
            meta=Meta(category=f"c{i % 3}", source="test", harmful=i % 2 == 0, idx=i),
        )
        out.append((f"k{i:03d}", rec, [_png((i, 2 * i, 255 - i))]))
    return out


def test_bounds_manifest_and_round_trip(tmp_path):
    data = _pairs(23)
    with ShardSetWriter(tmp_path / "ds", source="test", max_samples=10) as w:
        for key, rec, imgs in data:
            w.write("train", rec, imgs, key)
        w.write(
            "eval",
            EvalRecord(prompt="p", label="harmful", category="weapons", meta=Meta(source="t")),
            [_jpeg(), _png()],
            "e0",
        )
    m = load_manifest(tmp_path / "ds")
    sp = m.splits["train"]
    assert [s.samples for s in sp.shards] == [10, 10, 3]
    assert sp.kind == "preference" and sp.schema_version == 1 and sp.samples == 23
    for s in sp.shards:  # sha256 and bytes describe the files on disk
        blob = (tmp_path / "ds" / s.name).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == s.sha256 and len(blob) == s.bytes
    assert m.total_samples == 24 and m.dataset_digest.startswith("sha256:")
    # images kept in their original encoding, a JSON record beside each
    with tarfile.open(tmp_path / "ds" / m.splits["eval"].shards[0].name) as tf:
        names = sorted(tf.getnames())
        assert names == ["e0.img0.jpg", "e0.img1.png", "e0.json"]
        assert tf.extractfile("e0.img0.jpg").read() == _jpeg()
    # read gives back exactly the records written
    got = {s["key"]: s for s in iter_samples(str(tmp_path / "ds"), "train")}
    assert sorted(got) == [k for k, _, _ in data]
    for key, rec, imgs in data:
        s = got[key]
        assert (s["prompt"], s["chosen"], s["rejected"]) == (rec.prompt, rec.chosen, rec.rejected)
        assert s["meta"] == rec.meta.model_dump()
        assert s["images"][0].tobytes() == Image.open(io.BytesIO(imgs[0])).convert("RGB").tobytes()
    ev = next(iter_samples(str(tmp_path / "ds"), "eval"))
    assert ev["label"] == "harmful" and ev["reference"] is None and len(ev["images"]) == 2


def test_byte_bound_and_digest_is_content_only(tmp_path):
    data = _pairs(40)  # ~2.5 KiB per sample in the tar
    for d in ("a", "b"):
        with ShardSetWriter(tmp_path / d, max_bytes=20480) as w:
            for key, rec, imgs in data:
                w.write("train", rec, imgs, key)
    a, b = load_manifest(tmp_path / "a"), load_manifest(tmp_path / "b")
    assert len(a.splits["train"].shards) > 1
    assert all(s.bytes <= 20480 for s in a.splits["train"].shards)
    assert a.dataset_digest == b.dataset_digest  # same content, same identity
    with ShardSetWriter(tmp_path / "c", max_bytes=20480) as w:
        for key, rec, imgs in data[:-1]:
            w.write("train", rec, imgs, key)
    assert load_manifest(tmp_path / "c").dataset_digest != a.dataset_digest


def test_interrupted_write_lists_nothing_it_wrote(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError), ShardSetWriter(out, max_samples=4) as w:
        for key, rec, imgs in _pairs(10):
            w.write("train", rec, imgs, key)
        raise RuntimeError("killed")
    # The finished shards (never listed) and the unfinished one were removed, and so was the
    # output directory the writer created (a failed convert leaves no empty folder behind).
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError), ShardSetWriter(kept, max_samples=4) as w:
        for key, rec, imgs in _pairs(10):
            w.write("train", rec, imgs, key)
        raise RuntimeError("killed")
    assert kept.is_dir() and not list(kept.iterdir())  # a folder the user made stays


def test_replacing_a_split_keeps_others_and_needs_overwrite(tmp_path):
    out = tmp_path / "ds"
    with ShardSetWriter(out) as w:
        for key, rec, imgs in _pairs(3):
            w.write("train", rec, imgs, key)
            w.write("other", rec, imgs, key)
    with pytest.raises(DataError, match="exists"), ShardSetWriter(out) as w:
        w.write("train", *_pairs(1)[0][1:], "x")
    # an interrupted replacement: the old split survives whole, the other split stays valid
    before = load_manifest(out)
    with pytest.raises(RuntimeError), ShardSetWriter(out, overwrite=True) as w:
        w.write("train", *_pairs(1)[0][1:], "x")
        raise RuntimeError("killed")
    m = load_manifest(out)
    assert m == before
    for sp in m.splits.values():
        for s in sp.shards:
            assert (out / s.name).is_file()
    assert len(list(iter_samples(str(out), "other"))) == 3
    assert len(list(iter_samples(str(out), "train"))) == 3
    # a completed replacement lists only the new shards and deletes the old ones
    with ShardSetWriter(out, overwrite=True) as w:
        w.write("train", *_pairs(1)[0][1:], "x")
    m = load_manifest(out)
    assert [s["key"] for s in iter_samples(str(out), "train")] == ["x"]
    old = {s.name for s in before.splits["train"].shards}
    assert not old & {s.name for s in m.splits["train"].shards}
    assert not [n for n in old if (out / n).exists()]
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(
        s.name for sp in m.splits.values() for s in sp.shards
    )


def test_writer_rejects_bad_input(tmp_path):
    rec = _pairs(1)[0][1]
    with ShardSetWriter(tmp_path / "ds") as w:
        with pytest.raises(DataError, match="key"):
            w.write("train", rec, [_png()], "a.b")
        w.write("train", rec, [_png()], "a")
        with pytest.raises(DataError, match="duplicate"):
            w.write("train", rec, [_png()], "a")
        with pytest.raises(DataError, match="image 0: not a readable image"):
            w.write("train", rec, [b"not an image"], "b")
        with pytest.raises(DataError, match="holds preference"):
            w.write("train", SFTRecord(prompt="p", response="r", meta=Meta(source="s")), [], "c")


def test_record_schemas():
    ok = {
        "images": ["img0.png"],
        "prompt": "p",
        "chosen": "c",
        "rejected": "r",
        "meta": {"source": "s", "harmful": True, "extra": [1]},
    }
    assert parse_record("preference", ok, "w").meta.model_dump()["extra"] == [1]
    bad = [
        ({**ok, "prompt": 3}, "prompt: Input should be a valid string"),
        ({k: v for k, v in ok.items() if k != "chosen"}, "chosen: Field required"),
        ({**ok, "meta": {"source": "s", "harmful": "yes"}}, "meta.harmful"),
        ({**ok, "images": ["img1.png"]}, "expected 'img0.<ext>'"),
        ({**ok, "surprise": 1}, "surprise"),
    ]
    for data, msg in bad:
        with pytest.raises(DataError, match="shard s.tar key 'k'") as e:
            parse_record("preference", data, "shard s.tar key 'k'")
        assert msg in str(e.value)
    with pytest.raises(DataError, match="label"):
        parse_record(
            "eval", {"prompt": "p", "label": "maybe", "category": "c", "meta": {"source": "s"}}, "w"
        )
    sft = parse_record(
        "sft",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response": "yo",
            "meta": {"source": "s"},
        },
        "w",
    )
    assert sft.prompt_text == "hi"
    with pytest.raises(DataError, match="prompt or messages"):
        parse_record("sft", {"response": "r", "meta": {"source": "s"}}, "w")
    seen: set[str] = set()
    assert [sanitize_key(x, seen) for x in ("a.b/c", "a.b/c", "07685")] == [
        "a_b_c",
        "a_b_c-1",
        "07685",
    ]


def test_manifest_tampering_is_detected(tmp_path):
    out = tmp_path / "ds"
    with ShardSetWriter(out) as w:
        for key, rec, imgs in _pairs(2):
            w.write("train", rec, imgs, key)
    m = json.loads((out / MANIFEST).read_text())
    m["splits"]["train"]["shards"][0]["samples"] = 5
    (out / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(DataError, match="samples does not match"):
        load_manifest(out)
    (out / MANIFEST).write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="not valid UTF-8 JSON"):
        load_manifest(out)
