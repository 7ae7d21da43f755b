"""evaluate() in one process: the kinds of exported models and what their scorecards hold."""

from __future__ import annotations

import json

import pytest
import torch
from eval_support import make_adapter_export, small_recipe, synth_eval
from PIL import Image

from vlalign.evaluation import evaluate
from vlalign.scorecard import read_scorecard


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_eval(tmp_path_factory.mktemp("runner") / "synth", eval_pairs=6)


def test_max_samples_and_rows(tmp_path, data, model_cache):
    recipe = small_recipe(model_cache, max_new_tokens=4)
    card = evaluate("builtin:tiny-llava", str(data), recipe, tmp_path, max_samples=4)
    assert card.metrics["n_total"] == 4 and card.settings["max_samples"] == 4
    rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert all(r["n_tokens"] <= 4 for r in rows)
    assert read_scorecard(tmp_path).to_dict() == card.to_dict()


def test_full_fine_tune_uses_its_recorded_base_as_reference(tmp_path, data, model_cache):
    """A fully fine-tuned export (config.json + safetensors) with vlalign_export.json naming its
    base: implicit rewards use that base as the reference (non-zero: the weights differ)."""
    from vlalign.models import build

    recipe = small_recipe(model_cache, max_new_tokens=4)
    built = build(recipe.model)
    with torch.no_grad():
        built.model.lm_head.weight.mul_(1.5)
    out = tmp_path / "full"
    built.model.save_pretrained(out, safe_serialization=True)
    built.processor.save_pretrained(out)
    (out / "vlalign_export.json").write_text(
        json.dumps(
            {"kind": "full", "family": "llava", "base_model": recipe.model.model_dump(mode="json")}
        )
    )
    card = evaluate(str(out), str(data), recipe, tmp_path / "eval")
    assert card.settings["model_kind"] == "full" and card.settings["pair_metric"] == "implicit"
    assert card.metrics["n_pairs"] == 6
    rows = [json.loads(x) for x in (tmp_path / "eval/rows.jsonl").read_text().splitlines()]
    assert all(abs(r["pair_rewards"][0]) > 1e-4 for r in rows)


def test_reward_model_scores_pairs_and_answers_nothing(tmp_path, data, model_cache):
    recipe = small_recipe(model_cache)
    export = make_adapter_export(tmp_path / "rm", recipe, reward=True)
    card = evaluate(str(export), str(data), recipe, tmp_path / "eval", name="rm")
    m = card.metrics
    assert card.settings["pair_metric"] == "reward"
    assert m["n_pairs"] == 6 and 0 <= m["reward_accuracy"] <= 1
    assert "harmful_refusal_rate" not in m and "text_validity_rate" not in m
    assert sum(r["pairs"] for r in card.per_category.values()) == 6
    assert all("refusal_rate" not in r for r in card.per_category.values())
    correct = sum(round(r["pair_accuracy"] * r["pairs"]) for r in card.per_category.values())
    assert correct == card.counts["pairs_correct"]
    assert Image.open(tmp_path / "eval/refusal_by_category.png").format == "PNG"
    assert "pair accuracy" in (tmp_path / "eval/scorecard.html").read_text()


def test_a_record_without_a_prompt_is_named(tmp_path, model_cache):
    """The writer refuses a blank prompt; a shard edited afterwards is named by evaluation."""
    import json

    from data_support import members, refresh_manifest, replace_member

    from data_pipeline.schemas import EvalRecord, Meta
    from data_pipeline.writer import ShardSetWriter
    from vlalign.errors import DataError

    with ShardSetWriter(tmp_path / "bad", source="test") as w:
        meta = Meta(category="weapons", source="test", harmful=True)
        w.write(
            "eval",
            EvalRecord(prompt="a request", label="harmful", category="weapons", meta=meta),
            [],
            "k0",
        )
    shard = next((tmp_path / "bad").glob("eval-*.tar"))
    name, raw = next((n, d) for n, d in members(shard) if n.endswith(".json"))
    replace_member(shard, name, json.dumps({**json.loads(raw), "prompt": "  "}).encode())
    refresh_manifest(tmp_path / "bad")
    with pytest.raises(DataError, match=r"shard eval-000000.tar key 'k0'.*prompt is empty"):
        evaluate(
            "builtin:tiny-llava", str(tmp_path / "bad"), small_recipe(model_cache), tmp_path / "o"
        )
