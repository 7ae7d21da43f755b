"""RLAIF-V (openbmb/RLAIF-V-Dataset): parquet shards (or JSONL) of preference pairs.

Columns: ds_name, image {bytes, path}, question, chosen, rejected, origin_dataset,
origin_split (a JSON-encoded string), idx, image_path (an id, not a shipped file: the image
comes from image.bytes, or from image.path / a path string resolved against --image-root).
category = ds_name; harmful = False (a helpfulness / faithfulness set).
"""

from __future__ import annotations

import json
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
    require_str,
)
from data_pipeline.schemas import sanitize_key
from vlalign.errors import DataError

KINDS = ("preference",)
DEFAULT_KIND = "preference"


def count(src: Path, opts: Options) -> int | None:
    return count_rows(src)


def items(src: Path, opts: Options) -> Iterator[Item | DataError]:
    if opts.kind not in (None, *KINDS):
        raise DataError(f"rlaif-v converts to kind preference, not {opts.kind!r}")
    roots = [opts.image_root or (src if src.is_dir() else src.parent)]
    seen: set[str] = set()
    for n, (where, row) in enumerate(iter_rows(src)):
        if isinstance(row, DataError):
            yield row
            continue
        try:
            ds_name = row.get("ds_name")
            if ds_name is not None and not isinstance(ds_name, str):
                raise DataError(f"{where}: ds_name must be a string")
            meta: dict[str, Any] = {
                "category": ds_name or "unknown",
                "source": "rlaif-v",
                "harmful": False,
            }
            for k in ("origin_dataset", "idx", "image_path"):
                if row.get(k) is not None:
                    meta[k] = str(row[k])
            if isinstance(row.get("origin_split"), str):
                try:
                    meta["origin_split"] = json.loads(row["origin_split"])
                except json.JSONDecodeError:
                    meta["origin_split"] = row["origin_split"]
            rec = make_record(
                "preference",
                {
                    "prompt": require_str(row, "question", where),
                    "chosen": require_str(row, "chosen", where),
                    "rejected": require_str(row, "rejected", where),
                    "meta": meta,
                },
                where,
            )
            if row.get("image") is None:
                raise DataError(f"{where}: no image")
            data = image_bytes(row["image"], roots, where)
        except DataError as e:
            yield e
            continue
        raw_key = (
            f"{ds_name}-{row['idx']}"
            if ds_name and row.get("idx") is not None
            else f"rlaifv-{n:07d}"
        )
        yield Item(sanitize_key(raw_key, seen), rec, [data], where)
