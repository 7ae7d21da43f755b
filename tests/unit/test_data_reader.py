"""Reading: corrupt inputs (error naming shard and key, or a counted skip), exact assignment of
samples to ranks x workers, seeded shuffling, and http(s) / s3 / file locations."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest
from data_support import first_key, members, refresh_manifest, replace_member
from PIL import Image

from data_pipeline.manifest import load_manifest
from data_pipeline.reader import consumer_stream, iter_samples, open_split
from data_pipeline.schemas import Meta, PreferenceRecord
from data_pipeline.skips import SkipCounter
from data_pipeline.validate import validate
from data_pipeline.writer import ShardSetWriter
from vlalign.errors import DataError


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 20 % 255, 90, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def _write(out: Path, n: int = 8, per_shard: int = 4) -> Path:
    with ShardSetWriter(out, source="test", max_samples=per_shard) as w:
        for i in range(n):
            rec = PreferenceRecord(
                prompt=f"p{i}",
                chosen=f"c{i}",
                rejected=f"r{i}",
                meta=Meta(source="test", category="x"),
            )
            w.write("train", rec, [_jpeg(i)], f"s{i:03d}")
    return out


@pytest.fixture
def ds(tmp_path) -> Path:
    return _write(tmp_path / "ds")


def _shard(ds: Path, i: int = 0) -> Path:
    return ds / load_manifest(ds).splits["train"].shards[i].name


def _record(shard: Path, key: str) -> dict:
    return json.loads(dict(members(shard))[f"{key}.json"])


def _tamper_json(ds: Path, change) -> str:
    shard = _shard(ds)
    key = first_key(shard)
    rec = _record(shard, key)
    data = change(rec)
    replace_member(
        shard, f"{key}.json", data if isinstance(data, bytes) else json.dumps(data).encode()
    )
    refresh_manifest(ds)
    return key


CORRUPTIONS = {
    "missing field": (
        lambda r: {k: v for k, v in r.items() if k != "chosen"},
        "chosen: Field required",
    ),
    "wrong type": (
        lambda r: {**r, "prompt": 5, "meta": {**r["meta"], "harmful": "yes"}},
        "prompt: Input should be a valid string",
    ),
    "non-UTF-8": (lambda r: b'{"prompt": "\xff\xfe"}', "not UTF-8"),
    "not JSON": (lambda r: b"{oops", "not valid JSON"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_bad_record_names_shard_and_key(ds, name):
    change, msg = CORRUPTIONS[name]
    key = _tamper_json(ds, change)
    shard = _shard(ds).name
    with pytest.raises(DataError) as e:
        list(iter_samples(str(ds), "train"))
    assert f"shard {shard} key {key!r}" in str(e.value) and msg in str(e.value)
    skips = SkipCounter()
    got = list(iter_samples(str(ds), "train", on_error="skip", skips=skips))
    assert len(got) == 7 and skips.count == 1 and key in skips.reasons[0]
    report = validate(str(ds))
    assert [(p.shard, p.key) for p in report.problems] == [(shard, key)]
    assert msg in report.problems[0].reason


def test_bad_jpeg(ds):
    shard = _shard(ds, 1)
    key = first_key(shard)
    jpg = dict(members(shard))[f"{key}.img0.jpg"]
    replace_member(shard, f"{key}.img0.jpg", jpg[: len(jpg) // 2])
    refresh_manifest(ds)
    with pytest.raises(
        DataError, match=rf"shard {shard.name} key '{key}': image img0.jpg does not decode"
    ):
        list(iter_samples(str(ds), "train"))
    skips = SkipCounter()
    assert len(list(iter_samples(str(ds), "train", on_error="skip", skips=skips))) == 7
    assert skips.count == 1
    assert [p.key for p in validate(str(ds)).problems] == [key]


def test_missing_image_member(ds):
    shard = _shard(ds)
    key = first_key(shard)
    replace_member(shard, f"{key}.img0.jpg", None)
    refresh_manifest(ds)
    with pytest.raises(DataError, match=rf"key '{key}': image member img0.jpg is missing"):
        list(iter_samples(str(ds), "train"))


@pytest.mark.parametrize("cut", ["mid-member", "block boundary"])
def test_truncated_tar(ds, cut):
    shard = _shard(ds)
    blob = shard.read_bytes()
    n = int(len(blob) * 0.45) if cut == "mid-member" else 512 * (len(blob) // 1024)
    shard.write_bytes(blob[:n])
    with pytest.raises(DataError, match=rf"shard {shard.name}: .*truncated") as e:
        list(iter_samples(str(ds), "train"))
    assert e.value.key.startswith("s00")  # the last key read
    skips = SkipCounter()
    got = list(iter_samples(str(ds), "train", on_error="skip", skips=skips))
    assert len(got) + skips.count == 8 and skips.count >= 1  # lost samples are counted
    problems = validate(str(ds)).problems
    assert problems and problems[0].shard == shard.name and "truncated" in problems[0].reason


def test_hash_mismatch(ds):
    shard = _shard(ds)
    key = first_key(shard)
    rec = _record(shard, key)
    rec["chosen"] = "tampered"  # still a valid record: only the hash tells
    replace_member(shard, f"{key}.json", json.dumps(rec).encode())
    with pytest.raises(
        DataError, match=rf"shard {shard.name}: sha256 .* does not match the manifest"
    ):
        list(iter_samples(str(ds), "train"))
    skips = SkipCounter()
    list(iter_samples(str(ds), "train", on_error="skip", skips=skips))
    assert skips.count == 1 and shard.name in skips.reasons[0]
    assert [p.shard for p in validate(str(ds)).problems] == [shard.name]


def test_missing_shard_and_manifest(ds):
    _shard(ds).unlink()
    with pytest.raises(DataError, match="no such file"):
        list(iter_samples(str(ds), "train"))
    assert validate(str(ds)).problems
    (ds / "manifest.json").unlink()
    with pytest.raises(DataError, match="no manifest.json"):
        list(iter_samples(str(ds), "train"))
    with pytest.raises(DataError, match="no split"):
        list(iter_samples(str(_write(ds.parent / "other")), "eval"))


@pytest.mark.parametrize("n,per_shard", [(37, 5), (37, 40)])  # shard-level and sample-level split
def test_every_sample_once_across_2_ranks_x_2_workers(tmp_path, n, per_shard):
    ref = open_split(str(_write(tmp_path / "ds", n, per_shard)), "train")
    for epoch in (0, 1):
        seen = []
        for c in range(4):  # consumer = rank * 2 + worker
            seen += [
                r["__key__"]
                for r in consumer_stream(
                    ref,
                    seed=7,
                    epoch=epoch,
                    shuffle=True,
                    shuffle_buffer=8,
                    consumer=c,
                    consumers=4,
                )
            ]
        assert sorted(seen) == [f"s{i:03d}" for i in range(n)]


def test_shuffle_is_seeded_by_seed_and_epoch(tmp_path):
    ref = open_split(str(_write(tmp_path / "ds", 30, 6)), "train")

    def order(seed, epoch):
        return [
            r["__key__"]
            for r in consumer_stream(ref, seed=seed, epoch=epoch, shuffle=True, shuffle_buffer=10)
        ]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(order(1, 1)) == sorted(order(2, 0))
    assert [r["__key__"] for r in consumer_stream(ref, shuffle=False)] == [
        f"s{i:03d}" for i in range(30)
    ]
    # looping continues into the next epoch; skipping is exact
    looped = consumer_stream(ref, seed=1, epoch=0, loop=True, shuffle=True, shuffle_buffer=10)
    first = [next(looped)["__key__"] for _ in range(45)]
    assert first[:30] == order(1, 0) and first[30:] == order(1, 1)[:15]
    resumed = consumer_stream(
        ref, seed=1, epoch=0, loop=True, shuffle=True, shuffle_buffer=10, skip=33
    )
    assert [next(resumed)["__key__"] for _ in range(12)] == first[33:45]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_s3_and_file_urls(ds, tmp_path, monkeypatch):
    expected = [s["key"] for s in iter_samples(str(ds), "train")]
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(ds.parent))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{ds.name}"
        assert [s["key"] for s in iter_samples(url, "train")] == expected
        assert validate(url).ok
        with pytest.raises(DataError, match="manifest"):
            list(iter_samples(url + "-missing", "train"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert [s["key"] for s in iter_samples(f"file://{ds}", "train")] == expected
    # s3:// without s3fs goes through `aws s3 cp URL -`: a stand-in CLI serves a local bucket
    bucket = tmp_path / "bucket"
    shutil.copytree(ds, bucket / "sets" / "ds")
    fake = tmp_path / "bin" / "aws"
    fake.parent.mkdir()
    fake.write_text(
        f'#!/bin/sh\n# aws s3 cp --only-show-errors s3://B/KEY -\nexec cat "{bucket}/${{4#s3://bucket/}}"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("data_pipeline.sources.has_s3fs", lambda: False)
    assert [s["key"] for s in iter_samples("s3://bucket/sets/ds", "train")] == expected


def test_train_loader_counts_skips_in_batches(tmp_path, model_cache):
    from data_support import encoder_for

    from data_pipeline.reader import TrainLoader

    ds = _write(tmp_path / "ds", 10, 5)
    key = _tamper_json(ds, lambda r: {**r, "rejected": None})
    enc = encoder_for("tiny-llava", model_cache)
    with pytest.raises(DataError, match=rf"key '{key}'.*rejected"):
        list(
            TrainLoader(str(ds), "train", kind="preference", encoder=enc, batch_size=4, loop=False)
        )
    loader = TrainLoader(
        str(ds), "train", kind="preference", encoder=enc, batch_size=4, loop=False, on_error="skip"
    )
    batches = list(loader)
    assert sum(b["n_examples"] for b in batches) == 9
    assert sum(b["n_skipped"] for b in batches) == 1  # reported in the step's batch
    assert loader.skips.count == 1 and key in loader.skips.reasons[0]
    assert loader.position == 12  # 3 windows of 4 (the last one partial)
    sft = next(
        iter(
            TrainLoader(
                str(ds), "train", kind="sft", encoder=enc, batch_size=4, loop=False, on_error="skip"
            )
        )
    )
    assert sft["input_ids"].shape[0] == sft["n_examples"]
