"""Shared pieces of the converters: rows from parquet/JSONL, images from bytes or paths."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from data_pipeline.schemas import _format_validation, _Record, record_type
from vlalign.errors import DataError


@dataclass
class Options:
    """Converter options (from `vlalign data convert`)."""

    kind: str | None = None
    image_root: Path | None = None
    meta: Path | None = None
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Item:
    """One converted sample: key (sanitized), record, encoded images, and where it came from."""

    key: str
    record: _Record
    images: list[bytes]
    where: str


def make_record(kind: str, data: dict[str, Any], where: str) -> _Record:
    """A record of `kind` from plain data (types checked strictly; DataError names `where`)."""
    try:
        return record_type(kind).model_validate(data)
    except ValidationError as e:
        raise DataError(f"{where}: {_format_validation(e)}") from None


def table_files(src: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """`src` itself, or the files with one of `suffixes` in the directory `src` (sorted)."""
    if src.is_file():
        return [src]
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
        if not files:
            raise DataError(f"{src}: no {' / '.join(suffixes)} files")
        return files
    raise DataError(f"{src}: no such file or directory")


def count_rows(src: Path) -> int | None:
    """Rows in the parquet / JSONL files of `src` (None when unknown)."""
    total = 0
    for f in table_files(src, (".parquet", ".jsonl")):
        if f.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(f).metadata.num_rows
        else:
            with open(f, "rb") as fh:
                total += sum(1 for line in fh if line.strip())
    return total


def iter_rows(src: Path) -> Iterator[tuple[str, dict[str, Any] | DataError]]:
    """(where, row) for every row of the parquet or JSONL files of `src`.

    A row that cannot be parsed is yielded as a DataError naming file and line.
    """
    for f in table_files(src, (".parquet", ".jsonl")):
        if f.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(f)
            except Exception as e:
                raise DataError(f"{f}: not a readable parquet file ({e})") from None
            i = 0
            for batch in pf.iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield f"{f.name} row {i}", row
                    i += 1
        else:
            with open(f, "rb") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    where = f"{f.name} line {n}"
                    try:
                        row = json.loads(line.decode("utf-8"))
                    except UnicodeDecodeError as e:
                        yield where, DataError(f"{where}: not UTF-8 ({e.reason})")
                        continue
                    except json.JSONDecodeError as e:
                        yield where, DataError(f"{where}: not valid JSON ({e})")
                        continue
                    if not isinstance(row, dict):
                        yield where, DataError(f"{where}: a line must be a JSON object")
                        continue
                    yield where, row


def resolve_path(path: str, roots: list[Path], where: str) -> Path:
    """The first existing `root/path` (absolute paths as they are)."""
    p = Path(path)
    if p.is_absolute():
        if p.is_file():
            return p
        raise DataError(f"{where}: image {path} does not exist")
    for root in roots:
        if (root / p).is_file():
            return root / p
    tried = ", ".join(str(r / p) for r in roots)
    raise DataError(f"{where}: image {path!r} not found (tried {tried})")


def image_bytes(value: Any, roots: list[Path], where: str) -> bytes:
    """Encoded image bytes from a path, raw bytes, or an HF Image struct {bytes, path}.

    Struct bytes win over its path (which may be null or a bare name); JSONL may carry the
    bytes base64-encoded.
    """
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return resolve_path(value, roots, where).read_bytes()
    if isinstance(value, dict):
        data = value.get("bytes")
        if isinstance(data, (bytes, bytearray)) and data:
            return bytes(data)
        if isinstance(data, str) and data:
            try:
                return base64.b64decode(data, validate=True)
            except binascii.Error:
                raise DataError(f"{where}: image.bytes is a string but not base64") from None
        if value.get("path"):
            return resolve_path(str(value["path"]), roots, where).read_bytes()
        raise DataError(f"{where}: image has neither bytes nor a path")
    raise DataError(
        f"{where}: image must be a path, bytes or {{bytes, path}}, got {type(value).__name__}"
    )


def require_str(row: dict[str, Any], key: str, where: str, *, allow_empty: bool = False) -> str:
    v = row.get(key)
    if not isinstance(v, str):
        got = "missing" if key not in row else f"{type(v).__name__}"
        raise DataError(f"{where}: field {key!r} must be a string ({got})")
    if not allow_empty and not v.strip():
        raise DataError(f"{where}: field {key!r} is empty")
    return v
