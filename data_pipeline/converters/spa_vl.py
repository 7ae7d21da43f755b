"""SPA-VL (sqrti/SPA-VL): parquet (or JSONL) rows.

train (`default`): image, question, chosen, rejected, image_name     -> preference pairs
validation:        image, question, chosen, rejected, class1..class3  -> preference pairs
test harm / help:  image, question, class1..class3                    -> eval (--label harmful
                                                                         for HarmEval, benign
                                                                         for HelpEval)
`image` is the HF Image struct {bytes, path}: bytes are used, the path only when bytes are
missing. Train rows carry no categories: `--meta meta_files/image_info/meta.json` joins them by
image name (a list of {image, class1, class2, class3, ...} or a dict keyed by image name).
category = class1; class2/class3 are kept in meta. harmful is unknown (None) for pairs.
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
from vlalign.errors import DataError

KINDS = ("preference", "eval")
DEFAULT_KIND = None  # preference when rows have chosen/rejected, eval otherwise


def count(src: Path, opts: Options) -> int | None:
    return count_rows(src)


def load_meta(path: Path) -> dict[str, dict[str, Any]]:
    """image name -> {class1, class2, class3, ...} from SPA-VL's meta.json."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the SPA-VL meta file ({e})") from None
    if isinstance(data, dict):
        return {str(k): v for k, v in data.items() if isinstance(v, dict)}
    if isinstance(data, list):
        out = {}
        for i, row in enumerate(data):
            if not isinstance(row, dict) or not isinstance(row.get("image"), str):
                raise DataError(f"{path}: entry {i} has no string 'image'")
            out[row["image"]] = row
        return out
    raise DataError(f"{path}: expected a list or an object")


def items(src: Path, opts: Options) -> Iterator[Item | DataError]:
    if opts.kind not in (None, *KINDS):
        raise DataError(f"spa-vl converts to kind {' or '.join(KINDS)}, not {opts.kind!r}")
    if opts.label not in (None, "harmful", "benign"):
        raise DataError(f"--label must be harmful or benign, not {opts.label!r}")
    meta_by_image = load_meta(opts.meta) if opts.meta else {}
    roots = [opts.image_root or (src if src.is_dir() else src.parent)]
    for n, (where, row) in enumerate(iter_rows(src)):
        if isinstance(row, DataError):
            yield row
            continue
        try:
            kind = opts.kind or ("preference" if "chosen" in row else "eval")
            question = require_str(row, "question", where)
            image_name = row.get("image_name")
            joined = meta_by_image.get(image_name, {}) if isinstance(image_name, str) else {}
            classes = {c: row.get(c, joined.get(c)) for c in ("class1", "class2", "class3")}
            for c, v in classes.items():
                if v is not None and not isinstance(v, str):
                    raise DataError(f"{where}: {c} must be a string, got {type(v).__name__}")
            meta: dict[str, Any] = {
                "category": classes["class1"] or "unknown",
                "source": "spa-vl",
                "harmful": None if kind == "preference" else opts.label == "harmful",
                **{c: v for c, v in classes.items() if c != "class1" and v is not None},
            }
            if isinstance(image_name, str):
                meta["image_name"] = image_name
            if kind == "preference":
                rec = make_record(
                    "preference",
                    {
                        "prompt": question,
                        "chosen": require_str(row, "chosen", where),
                        "rejected": require_str(row, "rejected", where),
                        "meta": meta,
                    },
                    where,
                )
            else:
                if opts.label is None:
                    raise DataError(
                        f"{where}: rows without chosen/rejected are eval prompts: pass --label "
                        "harmful (HarmEval) or benign (HelpEval)"
                    )
                rec = make_record(
                    "eval",
                    {
                        "prompt": question,
                        "label": opts.label,
                        "category": meta["category"],
                        "meta": meta,
                    },
                    where,
                )
            if "image" not in row or row["image"] is None:
                raise DataError(f"{where}: no image")
            data = image_bytes(row["image"], roots, where)
        except DataError as e:
            yield e
            continue
        yield Item(f"spavl-{n:07d}", rec, [data], where)
