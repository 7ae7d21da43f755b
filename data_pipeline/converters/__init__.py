"""`vlalign data convert --format F SRC OUT`: published data set layouts -> validated shards.

Formats (layouts in each module's docstring; facts in shared/DATASETS.md):
    vlguard   VLGuard train.json / test.json + image folder        -> sft (or eval)
    spa-vl    SPA-VL parquet / JSONL rows                           -> preference (or eval)
    rlaif-v   RLAIF-V parquet / JSONL rows                          -> preference
    jsonl     generic JSONL with image paths                        -> sft | preference | eval
    beavertails-v  BeaverTails-V parquet rows (safety pairs + flags)  -> preference (or eval)

A row that cannot be converted raises a DataError naming the source file and row (policy
"raise"), or is skipped, counted and reported (policy "skip").
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm import tqdm

from data_pipeline.converters import beavertails_v, jsonl, rlaif_v, spa_vl, vlguard
from data_pipeline.converters.common import Item, Options
from data_pipeline.skips import SkipCounter, check_policy, handle
from data_pipeline.writer import DEFAULT_MAX_BYTES, DEFAULT_MAX_SAMPLES, ShardSetWriter
from vlalign.errors import DataError

FORMATS: dict[str, ModuleType] = {
    "vlguard": vlguard,
    "spa-vl": spa_vl,
    "rlaif-v": rlaif_v,
    "jsonl": jsonl,
    "beavertails-v": beavertails_v,
}


def convert(
    fmt: str,
    src: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    kind: str | None = None,
    image_root: str | Path | None = None,
    meta: str | Path | None = None,
    label: str | None = None,
    on_error: str = "raise",
    limit: int | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    overwrite: bool = False,
    progress: bool = False,
    shift: str | None = None,
) -> dict[str, Any]:
    """Convert `src` in format `fmt` into split `split` of the shard set `out`.

    `shift` marks an eval split as departing from training on purpose (manifest `shift`, e.g.
    "no-leak" for a benchmark subset whose text does not give the harm away); evaluation
    reports it beside the held-out split.

    Returns {"split", "kind", "samples", "skipped", "skip_reasons", "dataset_digest", "out"}.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if shift is not None and kind not in (None, "eval"):
        raise DataError(f"--shift marks eval splits only (--kind is {kind})")
    policy = check_policy(on_error)
    module = FORMATS[fmt]
    src_p = Path(src)
    if not src_p.exists():
        raise DataError(f"{src}: no such file or directory")
    opts = Options(
        kind=kind,
        image_root=Path(image_root) if image_root else None,
        meta=Path(meta) if meta else None,
        label=label,
    )
    skips = SkipCounter()
    total = module.count(src_p, opts) if progress else None
    bar = tqdm(total=total, desc=f"convert {fmt}", unit="row", disable=not progress)
    try:
        return _convert(module, fmt, src, src_p, opts, out, split, policy, skips, bar, limit,
                        max_samples, max_bytes, overwrite, shift)  # fmt: skip
    finally:
        bar.close()  # before any error line, so the two do not share a line


def _convert(module, fmt, src, src_p, opts, out, split, policy, skips, bar, limit,
             max_samples, max_bytes, overwrite, shift) -> dict[str, Any]:  # fmt: skip
    written = 0
    out_kind: str | None = None
    with ShardSetWriter(
        out,
        source=fmt,
        max_samples=max_samples,
        max_bytes=max_bytes,
        overwrite=overwrite,
        info={f"convert.{split}": {"format": fmt, "src": str(src_p)}},
    ) as w:
        if split in w.manifest.splits and not overwrite:  # once, not as a per-row error
            raise DataError(f"{out}: split {split!r} exists (use --overwrite to replace it)")
        if shift is not None:
            w.mark_shift(split, shift)
        for item in module.items(src_p, opts):
            bar.update(1)
            if isinstance(item, DataError):
                handle(item, policy, skips)
                continue
            assert isinstance(item, Item)
            if out_kind is not None and item.record.kind != out_kind:
                handle(
                    DataError(f"{item.where}: a {item.record.kind} record in a {out_kind} split"),
                    policy,
                    skips,
                )
                continue
            try:
                w.write(split, item.record, item.images, item.key)
            except DataError as e:
                handle(DataError(f"{item.where}: {e}"), policy, skips)
                continue
            out_kind = item.record.kind
            written += 1
            if limit is not None and written >= limit:
                break
        if written == 0:
            raise DataError(
                f"{src}: no sample converted ({skips.count} skipped"
                + (f"; first: {skips.reasons[0]}" if skips.reasons else "")
                + ")"
            )
    return {
        "out": str(out),
        "split": split,
        "kind": out_kind,
        "samples": written,
        "skipped": skips.count,
        "skip_reasons": skips.reasons,
        "dataset_digest": w.manifest.dataset_digest,
    }
