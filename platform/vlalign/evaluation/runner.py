"""`evaluate()`: model reference + eval shards -> scorecard (JSON, PNG, HTML), logged to MLflow.

Steps: check the data (exists, eval records, not empty) and resolve the model reference; answer
every prompt (one process, or split across Ray workers); detect refusals and check validity on
the merged answers; compute metrics; write the outputs; log them to an MLflow run when given.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from vlalign.config.schema import Recipe
from vlalign.errors import DataError, VlalignError
from vlalign.evaluation.generation import GenerationSettings
from vlalign.evaluation.metrics import EvalRow, compute_metrics
from vlalign.evaluation.model_ref import ModelSpec, resolve_model_ref
from vlalign.safety.refusal import RefusalDetector, make_detector
from vlalign.evaluation.scorecard import Scorecard, write_outputs
from vlalign.safety.validity import Validity, text_validity
from vlalign.evaluation.worker import EvalJob, evaluate_slice, iter_eval_samples

N_SAMPLES = 8  # rows kept in the scorecard's "samples"


def _is_url(location: str) -> bool:
    return "://" in location or location.startswith("pipe:")


def check_data(location: str, split: str | None, max_samples: int | None) -> tuple[str, int]:
    """(dataset digest, prompts to evaluate) of an eval split; DataError/VlalignError for a
    missing location, a split of another kind, an empty set or a first record that is bad."""
    from data_pipeline.reader import open_split

    if not _is_url(location) and not Path(location).is_dir():
        raise VlalignError(f"--data {location}: no such directory")
    ref = open_split(location, split, kind="eval")  # DataError names the kind it holds
    n = ref.samples if max_samples is None else min(ref.samples, max_samples)
    if n == 0:
        raise DataError(f"--data {location}: the eval set (split {ref.split!r}) is empty")
    next(iter_eval_samples(location, split, 1))  # the first record decodes and is an eval record
    return ref.manifest.dataset_digest, n


def score_rows(raw: list[dict], detector: RefusalDetector) -> list[EvalRow]:
    """Worker rows + refusal flags (one detector call over all answers) + validity -> EvalRows."""
    answers = [r["answer"] for r in raw if r["answer"] is not None]
    flags = iter(detector.is_refusal(answers) if answers else [])
    rows = []
    for r in raw:
        answered = r["answer"] is not None
        ref = next(flags) if answered else False
        v = text_validity(r["answer"]) if answered else Validity(False, None)
        pr = r.get("pair_rewards")
        rows.append(
            EvalRow(
                index=r["index"],
                key=r["key"],
                prompt=r["prompt"],
                label=r["label"],
                category=r["category"],
                answer=r["answer"],
                n_tokens=r["n_tokens"],
                refused=bool(ref),
                valid=v.valid,
                invalid_reason=v.reason,
                pair_rewards=tuple(pr) if pr is not None else None,
                meta=r.get("meta") or {},
            )
        )
    return rows


def _progress_bar(enabled: bool, total: int | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", disable=not enabled, leave=False)


def evaluate(
    model_ref: str,
    data: str | None = None,
    recipe: Recipe | None = None,
    out_dir: str | Path = "eval",
    num_workers: int | None = None,
    tracking: str | None = None,
    *,
    name: str = "safety",
    max_samples: int | None = None,
    batch_size: int | None = None,
    detector: RefusalDetector | None = None,
    tracking_uri: str | None = None,
    progress: bool = False,
) -> Scorecard:
    """Evaluate `model_ref` on the eval shards `data`; write outputs to `out_dir`; return the card.

    recipe: decoding (eval.*), max_length (data.max_length), the model section for built-ins and
    adapters without a recorded base; default Recipe(). num_workers: Ray workers (default
    recipe.eval.num_workers; 1 runs in this process). tracking: an MLflow run id to log the
    scorecard to (under eval/<name>/). tracking_uri: default recipe.tracking.uri or the
    embedded store ./mlruns/mlflow.db (vlalign.tracking.store.resolve_store).
    """
    recipe = recipe or Recipe()
    ev = recipe.eval
    data = data or ev.data or recipe.data.eval
    if not data:
        raise VlalignError("no eval data: pass --data EVAL_SHARDS (or set eval.data in the recipe)")
    if not _is_url(data):
        data = str(Path(data).resolve())
    split = recipe.data.eval_split
    max_samples = max_samples or ev.max_samples
    num_workers = num_workers or ev.num_workers
    if num_workers < 1:
        raise VlalignError(f"--workers must be >= 1, got {num_workers}")
    from vlalign.tracking.store import resolve_store

    store = resolve_store(tracking_uri or recipe.tracking.uri)
    uri = store.uri
    out_dir = Path(out_dir)

    digest, n_prompts = check_data(data, split, max_samples)
    import torch

    if not torch.cuda.is_available():  # see training/loop.py: oversubscribed OpenMP threads spin
        torch.set_num_threads(max(1, int(recipe.resources.cpus_per_worker)))
    settings = GenerationSettings.from_eval_config(ev, batch_size)
    # an MLflow model is downloaded for the duration of the evaluation only
    with tempfile.TemporaryDirectory(prefix="vlalign-eval-model-") as download:
        spec = resolve_model_ref(
            model_ref, recipe, uri, download_dir=download, registry_uri=store.registry
        )
        detector = detector or make_detector(  # a bad judge fails before any generation
            ev.refusal_detector, ev.judge_model, cache_dir=recipe.model.cache_dir
        )
        _materialize_base(spec)
        job = EvalJob(
            spec=spec,
            data=data,
            split=split,
            settings=settings,
            max_length=recipe.data.max_length,
            max_samples=max_samples,
            logprob_chunk=recipe.method.logprob_chunk,
            tracking_uri=uri,
            registry_uri=store.registry,
        )
        parts = _answer(job, num_workers, recipe, n_prompts, progress)
    from vlalign.evaluation.distributed import merge_rows

    raw, pair_kind, skipped_pairs = merge_rows(parts)
    if not raw:
        raise DataError(f"--data {data}: the eval set (split {split!r}) is empty")
    rows = score_rows(raw, detector)
    result = compute_metrics(rows, pair_kind)
    if skipped_pairs:
        result.counts["pairs_skipped_no_reference"] = skipped_pairs
    card = Scorecard(
        name=name,
        model=model_ref,
        data=data,
        data_digest=digest,
        metrics=result.metrics,
        per_category=result.per_category,
        counts=result.counts,
        samples=[
            {
                "key": r.key,
                "label": r.label,
                "category": r.category,
                "prompt": r.prompt,
                "answer": r.answer,
                "refused": r.refused,
                "valid": r.valid,
                **({"pair_rewards": list(r.pair_rewards)} if r.pair_rewards else {}),
            }
            for r in rows[:N_SAMPLES]
        ],
        settings={
            "split": split,
            "max_samples": max_samples,
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.do_sample,
            "temperature": settings.temperature if settings.do_sample else None,
            "top_p": settings.top_p if settings.do_sample else None,
            "refusal_detector": getattr(detector, "name", type(detector).__name__),
            "pair_metric": pair_kind,
            "model_kind": spec.kind,
        },
    )
    write_outputs(card, out_dir)
    (out_dir / "rows.jsonl").write_text(
        "".join(json.dumps(_row_json(r)) + "\n" for r in rows), encoding="utf-8"
    )
    if tracking:
        from vlalign.evaluation.mlflow_log import log_scorecard

        log_scorecard(card, tracking, name, tracking_uri=uri)
    return card


def _answer(
    job: EvalJob, num_workers: int, recipe: Recipe, n_prompts: int, progress: bool
) -> list[dict]:
    """Worker results: evaluate_slice in this process, or one Ray task per worker."""
    if num_workers == 1:
        with _progress_bar(progress, n_prompts, "eval") as bar:
            return [evaluate_slice(job, 0, 1, progress=bar.update)]
    from vlalign.evaluation.distributed import run_sharded

    with _progress_bar(progress, num_workers, "eval workers") as bar:
        return run_sharded(
            evaluate_slice,
            job,
            num_workers,
            address=recipe.resources.address,
            gpus_per_worker=recipe.resources.gpus_per_worker,
            on_done=lambda done, total: bar.update(1),
        )


def _row_json(r: EvalRow) -> dict:
    return {
        "index": r.index,
        "key": r.key,
        "label": r.label,
        "category": r.category,
        "prompt": r.prompt,
        "answer": r.answer,
        "n_tokens": r.n_tokens,
        "refused": r.refused,
        "valid": r.valid,
        "invalid_reason": r.invalid_reason,
        "pair_rewards": list(r.pair_rewards) if r.pair_rewards else None,
    }


def _materialize_base(spec: ModelSpec) -> None:
    """Write a built-in base model to its cache once, before workers would race to build it."""
    from vlalign.models.builder import resolve_source

    resolve_source(spec.base)
