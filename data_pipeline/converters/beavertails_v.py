"""BeaverTails-V (HF saferlhf-v/BeaverTails-V, PKU-Alignment/BeaverTails-V): parquet (or JSONL)
rows of safety preference pairs, one config per harm category, splits train / evaluation.

Columns: question, image, category, image_severity (int), response_1, response_2,
response_1_from, response_2_from, more_helpful_response_id, is_response_1_safe,
is_response_2_safe, safer_response_id, response_{1,2}_harmless_rate, response_{1,2}_helpful_rate.
Flags and ids are STRINGS ("True"/"False", "1"/"2"); real booleans and integers are accepted
too. `image` is the HF Image struct {bytes, path} (bytes win).

Records (kind "preference", the default): chosen = the SAFER response (safer_response_id),
rejected = the other; meta keeps category, image_severity, the per-response safety flags as
chosen_safe / rejected_safe (what the cost model's sign term reads), chosen_more_helpful, the
response sources and rates, and safer_response_id / more_helpful_response_id as given.
harmful (is the request harmful) is not labelled per row: None. `--kind eval --label
harmful|benign` writes eval records (label, category, chosen/rejected) for scorecards.

Point SRC at one split: a parquet/JSONL file, or a directory (all configs) holding the files
of ONE split; a directory with both train* and evaluation* files is refused (they would mix).
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
    require_str,
    table_files,
)
from vlalign.errors import DataError

KINDS = ("preference", "eval")
DEFAULT_KIND = "preference"
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def count(src: Path, opts: Options) -> int | None:
    return count_rows(src)


def _flag(row: dict, col: str, where: str) -> bool:
    """A safety flag stored as a string ("True"/"False"; also a bool)."""
    v = row.get(col)
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise DataError(f"{where}: {col} must be 'True' or 'False', got {v!r}")


def _response_id(row: dict, col: str, where: str) -> int:
    """A response id stored as a string ("1" or "2"; also an int)."""
    v = row.get(col)
    if isinstance(v, str) and v.strip() in ("1", "2"):
        return int(v.strip())
    if isinstance(v, int) and not isinstance(v, bool) and v in (1, 2):
        return v
    raise DataError(f"{where}: {col} must be '1' or '2', got {v!r}")


def _check_one_split(src: Path) -> None:
    if not src.is_dir():
        return
    names = [p.name.lower() for p in table_files(src, (".parquet", ".jsonl"))]
    if any(n.startswith("train") for n in names) and any(n.startswith("eval") for n in names):
        raise DataError(
            f"{src}: holds both train and evaluation files; point SRC at one split's files "
            "(the splits would mix)"
        )


def _meta(row: dict, where: str, safer: int) -> dict[str, Any]:
    other = 3 - safer
    category = require_str(row, "category", where)
    severity = row.get("image_severity")
    if severity is not None and (isinstance(severity, bool) or not isinstance(severity, int)):
        raise DataError(f"{where}: image_severity must be an integer, got {severity!r}")
    meta: dict[str, Any] = {
        "category": category,
        "source": "beavertails-v",
        "harmful": None,
        "image_severity": severity,
        "chosen_safe": _flag(row, f"is_response_{safer}_safe", where),
        "rejected_safe": _flag(row, f"is_response_{other}_safe", where),
        "safer_response_id": str(safer),
    }
    if row.get("more_helpful_response_id") is not None:
        helpful = _response_id(row, "more_helpful_response_id", where)
        meta["more_helpful_response_id"] = str(helpful)
        meta["chosen_more_helpful"] = helpful == safer
    for side, i in (("chosen", safer), ("rejected", other)):
        for field in ("from", "harmless_rate", "helpful_rate"):
            v = row.get(f"response_{i}_{field}")
            if v is not None:
                meta[f"{side}_{field}"] = v
    return meta


def items(src: Path, opts: Options) -> Iterator[Item | DataError]:
    kind = opts.kind or DEFAULT_KIND
    if kind not in KINDS:
        raise DataError(f"beavertails-v converts to kind {' or '.join(KINDS)}, not {kind!r}")
    if kind == "eval" and opts.label not in ("harmful", "benign"):
        raise DataError("--kind eval needs --label harmful or benign")
    if kind == "preference" and opts.label is not None:
        raise DataError("--label applies to --kind eval only")
    _check_one_split(src)
    roots = [opts.image_root or (src if src.is_dir() else src.parent)]
    for n, (where, row) in enumerate(iter_rows(src)):
        if isinstance(row, DataError):
            yield row
            continue
        try:
            question = require_str(row, "question", where)
            responses = {i: require_str(row, f"response_{i}", where) for i in (1, 2)}
            safer = _response_id(row, "safer_response_id", where)
            meta = _meta(row, where, safer)
            chosen, rejected = responses[safer], responses[3 - safer]
            if kind == "preference":
                data = {"prompt": question, "chosen": chosen, "rejected": rejected, "meta": meta}
            else:
                meta["harmful"] = opts.label == "harmful"
                data = {
                    "prompt": question,
                    "label": opts.label,
                    "category": meta["category"],
                    "reference": chosen,
                    "chosen": chosen,
                    "rejected": rejected,
                    "meta": meta,
                }
            rec = make_record(kind, data, where)
            if row.get("image") is None:
                raise DataError(f"{where}: no image")
            img = image_bytes(row["image"], roots, where)
        except DataError as e:
            yield e
            continue
        yield Item(f"beavertailsv-{n:07d}", rec, [img], where)
