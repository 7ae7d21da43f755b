"""One evaluation worker: load the model, answer its slice of the eval set, score pairs.

A worker with number `worker` of `num_workers` takes the samples whose index i (position in the
split's reading order) has i % num_workers == worker, in each split of the job in turn (one
model load for all of them); every row names its split. It returns plain-dict rows (no images)
carrying their index, so the driver can merge any number of workers back into index order.
Refusal detection and metrics happen once, in the driver, on the merged rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vlalign.errors import DataError
from vlalign.evaluation.metrics import LABELS
from vlalign.evaluation.model_ref import Fetch, ModelSpec, load_model
from vlalign.evaluation.pairs import has_pair, pair_kind_of, score_pairs
from vlalign.models.generation import GenerationSettings, generate


@dataclass
class EvalJob:
    """Everything a worker needs (picklable): model, data, decoding and length limits.

    `splits`: the eval splits answered in turn (empty: only `split`).
    """

    spec: ModelSpec
    data: str
    split: str | None
    settings: GenerationSettings
    max_length: int = 512
    max_samples: int | None = None
    logprob_chunk: int = 1024
    device: str | None = None
    fetch: Fetch | None = None  # downloads MLflow models again on a node without the files
    splits: tuple[str, ...] = ()

    def all_splits(self) -> tuple[str | None, ...]:
        return self.splits or (self.split,)


def check_eval_sample(sample: dict, data: str) -> None:
    """DataError unless the sample can be evaluated: a harmful|benign label and a prompt.

    (The reader already refuses splits of another kind and records that break the eval schema.)
    """
    where = f"{data}: sample {sample.get('key', '?')} in shard {sample.get('shard', '?')}"
    if sample.get("label") not in LABELS:
        raise DataError(f"{where}: label {sample.get('label')!r} is not one of {list(LABELS)}")
    if not isinstance(sample.get("prompt"), str) or not sample["prompt"].strip():
        raise DataError(f"{where}: empty prompt: nothing to answer")


def iter_eval_samples(
    data: str, split: str | None, max_samples: int | None = None
) -> Iterator[tuple[int, dict]]:
    """(index, sample) over the eval set in reading order, each checked, at most max_samples."""
    from data_pipeline.reader import iter_samples

    for i, sample in enumerate(iter_samples(data, split=split, kind="eval")):
        if max_samples is not None and i >= max_samples:
            return
        check_eval_sample(sample, data)
        yield i, sample


def eval_row(
    split: str | None,
    index: int,
    sample: dict,
    generated,
    *,
    pair_rewards: list[float] | None = None,
    meta: dict | None = None,
) -> dict:
    """One scored prompt as the evaluation's row: where it came from, its answer (None and 0
    tokens when `generated`, a models.generation result, is None: nothing was generated)."""
    return {
        "split": split,
        "index": index,
        "key": str(sample.get("key", index)),
        "prompt": sample["prompt"],
        "label": sample["label"],
        "category": str(sample.get("category") or "uncategorized"),
        "answer": generated.text if generated is not None else None,
        "n_tokens": generated.n_tokens if generated is not None else 0,
        "pair_rewards": pair_rewards,
        "meta": meta or {},
    }


def _device(job: EvalJob) -> str:
    if job.device:
        return job.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _local_spec(job: EvalJob) -> ModelSpec:
    """The job's model spec, re-resolved on this machine when its files are not here (a worker
    on another node of a cluster: MLflow models are downloaded again, into a temp folder)."""
    from pathlib import Path

    from vlalign.errors import VlalignError
    from vlalign.evaluation.model_ref import is_mlflow_ref, resolve_model_ref

    spec = job.spec
    if spec.path is None or Path(spec.path).exists():
        return spec
    if is_mlflow_ref(spec.ref):
        again = resolve_model_ref(spec.ref, None, job.fetch)
        if spec.kind == "adapter":  # keep the base the driver resolved (recipe, cache dir)
            again.base = spec.base
        else:  # the model itself now lives in the new download
            again.base = again.base.model_copy(
                update={"family": spec.base.family, "dtype": spec.base.dtype}
            )
        return again
    raise VlalignError(f"--model {spec.ref}: {spec.path} does not exist on this worker's machine")


def evaluate_slice(
    job: EvalJob,
    worker: int = 0,
    num_workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Answer (and pair-score) this worker's slice.

    Returns {"rows": [...], "pair_kind": "implicit" | "reward" | None, "skipped_pairs": int,
    "skipped_by_split": {split: int}}. A row: {"split", "index" (within its split), "key",
    "prompt", "label", "category", "answer", "n_tokens", "pair_rewards": [chosen, rejected] |
    None, "meta"}. A reward model answers nothing
    (answer None): it only scores pairs.
    """
    import torch

    from vlalign.models.inputs import ChatEncoder

    torch.manual_seed(job.settings.seed)
    loaded = load_model(_local_spec(job), _device(job))
    encoder = ChatEncoder(loaded.processor, loaded.family, job.max_length)
    pair_kind = pair_kind_of(loaded)
    generates = loaded.reward_model is None
    rows: list[dict] = []
    skipped: dict[str | None, int] = {}
    batch: list[tuple[int, dict]] = []
    split: str | None = None

    def flush() -> None:
        if not batch:
            return
        samples = [s for _, s in batch]
        answers = (
            generate(loaded.model, encoder, samples, job.settings)
            if generates
            else [None] * len(samples)
        )
        paired = [s for s in samples if has_pair(s)]
        _, scores = score_pairs(loaded, encoder, paired, job.logprob_chunk)
        rewards = iter(scores)
        if paired and pair_kind is None:
            skipped[split] = skipped.get(split, 0) + len(paired)
        for (i, s), g in zip(batch, answers, strict=True):
            pr = next(rewards) if has_pair(s) and pair_kind else None
            rows.append(
                eval_row(
                    split,
                    i,
                    s,
                    g,
                    pair_rewards=list(pr) if pr is not None else None,
                    meta={k: v for k, v in (s.get("meta") or {}).items() if k in ("source",)},
                )
            )
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for split in job.all_splits():
        for i, sample in iter_eval_samples(job.data, split, job.max_samples):
            if i % num_workers != worker:
                continue
            batch.append((i, sample))
            if len(batch) >= job.settings.batch_size:
                flush()
        flush()  # batches never mix splits
    return {
        "rows": rows,
        "pair_kind": pair_kind,
        "skipped_pairs": sum(skipped.values()),
        "skipped_by_split": skipped,
    }
