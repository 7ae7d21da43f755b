"""`vlalign eval` end to end: a tiny model on synthetic eval shards -> JSON + PNG + HTML + table;
bad inputs -> one clear line and exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml
from eval_support import synth_eval
from PIL import Image

from vlalign.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_eval(tmp_path_factory.mktemp("eval-e2e") / "synth", eval_pairs=10)


@pytest.fixture
def recipe_file(tmp_path, model_cache):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "e2e-eval",
                "model": {"name": "tiny-llava", "cache_dir": model_cache},
                "eval": {"max_new_tokens": 6, "batch_size": 4},
            }
        )
    )
    return str(path)


def test_eval_tiny_model_writes_all_outputs(tmp_path, synth, recipe_file, capsys):
    out = tmp_path / "out"
    rc = main(
        ["eval", "--model", "builtin:tiny-llava", "--data", str(synth), "--recipe", recipe_file,
         "--out", str(out), "--name", "base", "eval.max_new_tokens=5"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    card = json.loads((out / "scorecard.json").read_text())
    assert card["schema"] == "vlalign.scorecard/1" and card["name"] == "base"
    assert card["model"] == "builtin:tiny-llava" and card["data"] == str(synth)
    assert card["data_digest"].startswith("sha256:")
    m = card["metrics"]
    assert m["n_total"] == 10 and m["n_harmful"] == 5 and m["n_benign"] == 5
    assert m["attack_success_rate"] == pytest.approx(1 - m["harmful_refusal_rate"])
    assert 0 < m["mean_response_tokens"] <= 5  # the override reached the decoder
    # synth's categories, each with its label and count
    cats = card["per_category"]
    assert sum(c["n"] for c in cats.values()) == 10
    assert {c["label"] for c in cats.values()} == {"harmful", "benign"}
    assert len(card["samples"]) == 8 and all(isinstance(s["answer"], str) for s in card["samples"])
    # a base model has no reference: synth's pairs are counted as skipped, not scored
    assert card["counts"]["pairs_skipped_no_reference"] == 10
    assert "implicit_reward_accuracy" not in m
    assert Image.open(out / "refusal_by_category.png").format == "PNG"
    page = (out / "scorecard.html").read_text()
    assert "data:image/png;base64," in page and "harmful_refusal_rate" in page
    assert "harmful_refusal_rate" in printed and "benign_refusal_rate" in printed
    assert str(out / "scorecard.json") in printed


def _fails(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    return err


def test_missing_model(tmp_path, synth, recipe_file, capsys):
    err = _fails(
        ["eval", "--model", str(tmp_path / "nope"), "--data", str(synth), "--recipe", recipe_file,
         "--out", str(tmp_path / "o")], capsys,
    )  # fmt: skip
    assert "nope: no such directory" in err
    empty = tmp_path / "empty-model"
    empty.mkdir()
    err = _fails(
        ["eval", "--model", str(empty), "--data", str(synth), "--recipe", recipe_file], capsys
    )
    assert "holds no model" in err
    err = _fails(["eval", "--model", "builtin:tiny-gpt", "--data", str(synth)], capsys)
    assert "no built-in 'tiny-gpt'" in err


def test_wrong_kind_of_shards(tmp_path, synth, recipe_file, capsys):
    """synth's train split holds preference records: evaluation refuses it, naming the kind."""
    err = _fails(
        ["eval", "--model", "builtin:tiny-llava", "--data", str(synth), "--recipe", recipe_file,
         "data.eval_split=train"], capsys,
    )  # fmt: skip
    assert "split 'train' holds preference records, not eval" in err


def test_empty_eval_set_and_missing_data(tmp_path, recipe_file, capsys):
    from data_pipeline.manifest import Manifest, finalize, make_split, write_manifest

    empty = tmp_path / "empty"
    empty.mkdir()
    write_manifest(empty, finalize(Manifest(splits={"eval": make_split("eval", "eval", [])})))
    err = _fails(
        ["eval", "--model", "builtin:tiny-llava", "--data", str(empty), "--recipe", recipe_file],
        capsys,
    )
    assert "the eval set (split 'eval') is empty" in err
    err = _fails(
        ["eval", "--model", "builtin:tiny-llava", "--data", str(tmp_path / "missing"),
         "--recipe", recipe_file], capsys,
    )  # fmt: skip
    assert "missing: no such directory" in err
    no_manifest = tmp_path / "no-manifest"
    no_manifest.mkdir()
    err = _fails(
        ["eval", "--model", "builtin:tiny-llava", "--data", str(no_manifest), "--recipe",
         recipe_file], capsys,
    )  # fmt: skip
    assert "no manifest.json" in err
    err = _fails(["eval", "--model", "builtin:tiny-llava", "--recipe", recipe_file], capsys)
    assert "no eval data" in err
    err = _fails(
        ["eval", "--model", "builtin:tiny-llava", "--data", str(empty), "--workers", "0"], capsys
    )
    assert "--workers must be >= 1" in err
