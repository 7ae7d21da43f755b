"""`vlalign data synth | convert | validate | stats` through vlalign.cli.main."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from data_support import first_key, refresh_manifest, replace_member

from data_pipeline.manifest import load_manifest
from data_pipeline.reader import iter_samples
from vlalign.cli import main


def test_data_commands(tmp_path, capsys, model_cache):
    out = tmp_path / "ds"
    assert (
        main(
            [
                "data",
                "synth",
                str(out),
                "--pairs",
                "12",
                "--eval-pairs",
                "4",
                "--seed",
                "2",
                "--shard-samples",
                "5",
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "train         preference     12 samples, 3 shards" in text
    assert "eval" in text and "shift-visual  eval            4 samples" in text
    assert main(["data", "synth", str(out), "--pairs", "12"]) == 2  # not empty: one-line error
    assert "is not empty" in capsys.readouterr().err

    assert main(["data", "validate", str(out), "--quiet"]) == 0
    assert "ok: " in capsys.readouterr().out

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"extends: tiny/sft\nmodel: {{cache_dir: {model_cache}}}\ndata: {{max_length: 40}}\n"
    )
    assert main(["data", "stats", str(out), "--recipe", str(recipe), "--json", "--quiet"]) == 0
    stats = json.loads(capsys.readouterr().out)
    train = stats["splits"]["train"]
    assert train["samples"] == 12 and train["labels"] == {"benign": 6, "harmful": 6}
    assert train["image_sizes"] == {"32x32": 12}
    assert train["tokens"]["prompt"]["min"] >= 16  # 16 image tokens of tiny-llava + text
    assert train["max_length"] == 40 and "prompt+chosen" in train["over_max_length"]
    assert main(["data", "stats", str(out), "--quiet", "--split", "eval"]) == 0
    assert "split eval: 4 eval samples" in capsys.readouterr().out

    # a corrupt record: validate lists shard, key and reason, and exits non-zero
    shard = out / load_manifest(out).splits["train"].shards[1].name
    key = first_key(shard)
    replace_member(shard, f"{key}.json", b'{"prompt": 1}')
    refresh_manifest(out)
    assert main(["data", "validate", str(out), "--quiet"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"BAD train/{shard.name} key {key}: invalid preference record")
    assert lines[-1].startswith("1 problem(s)")

    src = tmp_path / "rows.jsonl"
    (tmp_path / "a.png").write_bytes(_png())
    src.write_text(
        json.dumps({"image": "a.png", "prompt": "p", "chosen": "c", "rejected": "r"})
        + "\n"
        + json.dumps({"image": "a.png", "prompt": "p"})
        + "\n"
    )
    assert (
        main(["data", "convert", "--format", "jsonl", str(src), str(tmp_path / "conv"), "--quiet"])
        == 2
    )
    assert "rows.jsonl line 2" in capsys.readouterr().err
    assert (
        main(
            [
                "data",
                "convert",
                "--format",
                "jsonl",
                str(src),
                str(tmp_path / "conv"),
                "--on-error",
                "skip",
                "--quiet",
            ]
        )
        == 0
    )
    assert "1 samples, 1 skipped" in capsys.readouterr().out
    assert main(["data", "validate", str(tmp_path / "nothing")]) == 2


def test_synth_noise_flag_in_a_fresh_process(tmp_path):
    """`vlalign data synth --noise F` from a clean working directory: the manifest records the
    fraction, the marked training pairs are the seeded share, a bad fraction is a one-line error."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root / 'platform'}{os.pathsep}{root}"}
    exe = str(Path(sys.executable).parent / "vlalign")

    def synth(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [exe, "data", "synth", *args, "--quiet"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = synth("ds", "--pairs", "20", "--eval-pairs", "4", "--shift-pairs", "0", "--noise", "0.5")
    assert r.returncode == 0, r.stderr
    assert "noise 0.5: 10 training pairs with a partly right chosen answer" in r.stdout
    info = json.loads((tmp_path / "ds" / "manifest.json").read_text())["info"]["synth"]
    assert (info["noise"], info["noisy_samples"]) == (0.5, 10)
    marked = [s["meta"].get("noise") for s in iter_samples(str(tmp_path / "ds"), "train")]
    assert marked.count("partial_chosen") == 10 and marked.count(None) == 10
    r = synth("bad", "--pairs", "4", "--noise", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: --noise must be a fraction in [0, 1], got 2.0" in r.stderr


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()
