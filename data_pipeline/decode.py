"""Raw tar sample -> decoded sample (record checked against its schema, images decoded to RGB).

Every failure is a `DataError` naming the shard, the key and the reason: missing or non-UTF-8
JSON, invalid JSON, a record that breaks its schema, a missing or undecodable image.
"""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image

from data_pipeline.schemas import parse_record, record_fields
from vlalign.errors import DataError


def where(raw: dict) -> str:
    return f"shard {raw.get('__shard__', '?')} key {raw.get('__key__', '?')!r}"


def load_json(raw: dict) -> Any:
    """The sample's JSON member, parsed."""
    data = raw.get("json")
    if data is None:
        raise DataError(f"{where(raw)}: no .json member")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where(raw)}: record is not UTF-8 ({e.reason} at byte {e.start})"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where(raw)}: record is not valid JSON ({e})") from None


def decode_image(data: bytes, name: str, raw: dict) -> Image.Image:
    """Fully decode one encoded image to RGB (truncated or corrupt data raise)."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")
    except Exception as e:
        raise DataError(
            f"{where(raw)}: image {name} does not decode ({e.__class__.__name__}: {e})"
        ) from None


def unsafe_key(key: str) -> bool:
    """Does a sample key (a tar member name without extensions) point outside the shard's
    directory: absolute, a drive or backslash path, or a '..' component?"""
    return key.startswith(("/", "\\")) or "\\" in key or ":" in key or ".." in key.split("/")


def decode_sample(raw: dict, kind: str, *, images: bool = True) -> dict:
    """The decoded-sample dict (see data_pipeline.schemas) of one raw sample.

    With `images=False` the images stay encoded bytes (faster, for tools that do not look).
    """
    if unsafe_key(str(raw.get("__key__", ""))):
        raise DataError(
            f"{where(raw)}: member name points outside the shard directory (absolute or '..')"
        )
    record = parse_record(kind, load_json(raw), where(raw))
    decoded: list[Any] = []
    for name in record.images:
        data = raw.get(name)
        if data is None:
            raise DataError(f"{where(raw)}: image member {name} is missing")
        decoded.append(decode_image(data, name, raw) if images else data)
    listed = set(record.images) | {"json"}
    extra = [k for k in raw if not k.startswith("__") and k not in listed]
    if extra:
        raise DataError(f"{where(raw)}: members not listed in the record: {', '.join(extra)}")
    return {
        "key": raw["__key__"],
        "shard": raw.get("__shard__", ""),
        "images": decoded,
        **record_fields(record),
    }
