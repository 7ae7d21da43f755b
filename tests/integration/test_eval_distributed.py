"""A 2-worker Ray evaluation gives exactly the scorecard of a 1-process evaluation."""

from __future__ import annotations

import json

import pytest
from eval_support import make_adapter_export, small_recipe, synth_eval

from vlalign.evaluation import evaluate
from vlalign.evaluation.distributed import merge_rows

pytestmark = pytest.mark.slow


def test_two_ray_workers_equal_one_process(tmp_path, model_cache):
    """An adapter (so preference pairs are scored too) on 12 synthetic eval prompts.

    One process with batches of 5 vs two Ray workers (a local cluster evaluate() starts and
    stops itself) with batches of 3: the same answers, rows and scorecard, byte for byte.
    """
    import ray

    recipe = small_recipe(model_cache)
    data = synth_eval(tmp_path / "synth", eval_pairs=12)
    adapter = make_adapter_export(tmp_path / "export", recipe)

    one = evaluate(str(adapter), str(data), recipe, tmp_path / "one", num_workers=1, batch_size=5)
    assert not ray.is_initialized()
    two = evaluate(str(adapter), str(data), recipe, tmp_path / "two", num_workers=2, batch_size=3)
    assert not ray.is_initialized()  # the cluster it started is gone

    assert one.to_dict() == two.to_dict()
    assert (tmp_path / "one/scorecard.json").read_bytes() == (
        tmp_path / "two/scorecard.json"
    ).read_bytes()
    rows = (tmp_path / "one/rows.jsonl").read_text().splitlines()
    assert rows == (tmp_path / "two/rows.jsonl").read_text().splitlines()
    assert [json.loads(r)["index"] for r in rows] == list(range(12))
    # the run measured real things: pairs were scored, categories of both labels present
    m = one.metrics
    assert m["n_total"] == 12 and m["n_harmful"] == 6 and m["n_benign"] == 6
    assert m["n_pairs"] == 12 and 0.0 <= m["implicit_reward_accuracy"] <= 1.0
    assert {r["label"] for r in one.per_category.values()} == {"harmful", "benign"}


def test_merge_rows_checks_coverage():
    part = lambda idx: {"rows": [{"index": i} for i in idx], "pair_kind": None}  # noqa: E731
    rows, kind, skipped = merge_rows([part([1, 3]), part([0, 2, 4])])
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4] and kind is None and skipped == 0
    with pytest.raises(RuntimeError, match="exactly once"):
        merge_rows([part([0, 1]), part([1, 2])])
    with pytest.raises(RuntimeError, match="exactly once"):
        merge_rows([part([0, 2])])
    with pytest.raises(RuntimeError, match="disagree"):
        merge_rows([part([0]), {"rows": [{"index": 1}], "pair_kind": "implicit"}])
