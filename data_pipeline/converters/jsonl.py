"""Generic JSONL: one sample per line, images as paths (relative to --image-root, default the
JSONL file's folder).

    {"id": "a1", "image": "imgs/a1.jpg", "prompt": "...", "response": "..."}          sft
    {"id": "a2", "images": ["x.png", "y.png"], "messages": [{"role": "user", ...}], "response": "..."}
    {"image": "b.jpg", "prompt": "...", "chosen": "...", "rejected": "...",
     "meta": {"category": "weapons", "harmful": true}}                               preference
    {"image": "c.jpg", "prompt": "...", "label": "harmful", "category": "drugs",
     "reference": "..."}                                                             eval

The kind is --kind, or inferred from the first line (label -> eval, chosen -> preference,
response -> sft); every line must then fit it. `meta.source` defaults to "jsonl".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.converters.common import (
    Item,
    Options,
    count_rows,
    image_bytes,
    iter_rows,
    make_record,
)
from data_pipeline.schemas import KINDS as ALL_KINDS
from data_pipeline.schemas import sanitize_key
from vlalign.errors import DataError

KINDS = ALL_KINDS
DEFAULT_KIND = None
_RESERVED = ("id", "image", "images")


def count(src: Path, opts: Options) -> int | None:
    return count_rows(src)


def infer_kind(row: dict[str, Any]) -> str:
    if "label" in row:
        return "eval"
    if "chosen" in row:
        return "preference"
    return "sft"


def items(src: Path, opts: Options) -> Iterator[Item | DataError]:
    if src.is_dir() or src.suffix.lower() != ".jsonl":
        raise DataError(f"{src}: the jsonl format reads one .jsonl file")
    roots = [opts.image_root or src.parent]
    kind = opts.kind
    seen: set[str] = set()
    for n, (where, row) in enumerate(iter_rows(src)):
        if isinstance(row, DataError):
            yield row
            continue
        try:
            kind = kind or infer_kind(row)
            if "image" in row and "images" in row:
                raise DataError(f"{where}: give image or images, not both")
            paths = row.get("images", [row["image"]] if "image" in row else [])
            if not isinstance(paths, list):
                raise DataError(f"{where}: images must be a list of paths")
            meta = row.get("meta", {})
            if not isinstance(meta, dict):
                raise DataError(f"{where}: meta must be an object")
            meta = {"source": "jsonl", **meta}
            if kind == "eval" and "category" in row and "category" not in meta:
                meta["category"] = row["category"]
            if (
                kind == "eval"
                and "harmful" not in meta
                and row.get("label") in ("harmful", "benign")
            ):
                meta["harmful"] = row["label"] == "harmful"
            fields = {k: v for k, v in row.items() if k not in _RESERVED and k != "meta"}
            rec = make_record(kind, {**fields, "meta": meta}, where)
            data = [image_bytes(p, roots, f"{where} image {i}") for i, p in enumerate(paths)]
        except DataError as e:
            yield e
            continue
        raw = row.get("id")
        key = sanitize_key(raw if isinstance(raw, (str, int)) else f"line-{n:07d}", seen)
        yield Item(key, rec, data, where)
