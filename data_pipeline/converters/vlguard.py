"""VLGuard (ys-zong/VLGuard): `train.json` / `test.json`, one JSON array of image entries.

Unsafe image: {id, image, safe: false, harmful_category, harmful_subcategory,
               instr-resp: [{instruction, response}]}            -> one harmful sample
Safe image:   {id, image, safe: true,
               instr-resp: [{safe_instruction, response}, {unsafe_instruction, response}]}
                                                                  -> one benign + one harmful
`image` is `<source>/<file>` relative to the image root (tried: ROOT/image, then
ROOT/<json stem>/image, as the official eval uses `<root>/test/<image>`). Instructions are read
by key name; ids stay strings; `safe` must be a JSON bool. Kind "sft" (default): prompt +
response (an empty response is a bad sample); kind "eval": label, category, reference.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.converters.common import Item, Options, image_bytes, make_record
from data_pipeline.schemas import sanitize_key
from vlalign.errors import DataError

KINDS = ("sft", "eval")
DEFAULT_KIND = "sft"


def _load(src: Path) -> list[Any]:
    if not src.is_file():
        raise DataError(f"{src}: no such file (VLGuard wants train.json or test.json)")
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{src}: not valid UTF-8 JSON ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{src}: expected a JSON array of entries, got {type(data).__name__}")
    return data


def count(src: Path, opts: Options) -> int | None:
    return len(_load(src))


def _turns(entry: dict[str, Any], where: str) -> list[tuple[str, str, bool, str]]:
    """(instruction, response, harmful, category) for each instruction of the entry."""
    safe = entry.get("safe")
    if not isinstance(safe, bool):
        raise DataError(f"{where}: 'safe' must be a JSON bool, got {safe!r}")
    pairs = entry.get("instr-resp")
    if not isinstance(pairs, list) or not pairs:
        raise DataError(f"{where}: 'instr-resp' must be a non-empty list")
    out = []
    for j, ir in enumerate(pairs):
        if not isinstance(ir, dict):
            raise DataError(f"{where}: instr-resp[{j}] must be an object")
        resp = ir.get("response")
        if not isinstance(resp, str):
            raise DataError(f"{where}: instr-resp[{j}].response must be a string")
        if not safe:
            instr, harmful = ir.get("instruction"), True
            category = entry.get("harmful_category")
            if not isinstance(category, str):
                raise DataError(f"{where}: unsafe entry without a string harmful_category")
        elif "safe_instruction" in ir:
            instr, harmful, category = ir["safe_instruction"], False, "safe"
        elif "unsafe_instruction" in ir:
            instr, harmful, category = ir["unsafe_instruction"], True, "unsafe_instruction"
        else:
            raise DataError(
                f"{where}: instr-resp[{j}] has none of instruction / safe_instruction / "
                "unsafe_instruction"
            )
        if not isinstance(instr, str) or not instr.strip():
            raise DataError(f"{where}: instr-resp[{j}]: the instruction must be a non-empty string")
        out.append((instr, resp, harmful, category))
    return out


def items(src: Path, opts: Options) -> Iterator[Item | DataError]:
    kind = opts.kind or DEFAULT_KIND
    if kind not in KINDS:
        raise DataError(f"vlguard converts to kind {' or '.join(KINDS)}, not {kind!r}")
    root = opts.image_root or src.parent
    roots = [root, root / src.stem]
    seen: set[str] = set()
    for idx, entry in enumerate(_load(src)):
        where = f"{src.name} entry {idx}"
        try:
            if not isinstance(entry, dict):
                raise DataError(f"{where}: entry must be an object")
            eid = entry.get("id")
            if not isinstance(eid, str):
                raise DataError(f"{where}: 'id' must be a string, got {eid!r}")
            where = f"{src.name} entry {idx} (id {eid!r})"
            image = entry.get("image")
            if not isinstance(image, str):
                raise DataError(f"{where}: 'image' must be a relative path string")
            turns = _turns(entry, where)
            data = image_bytes(image, roots, where)
        except DataError as e:
            yield e
            continue
        for j, (instr, resp, harmful, category) in enumerate(turns):
            meta = {
                "category": category,
                "source": "vlguard",
                "harmful": harmful,
                "id": eid,
                "image_path": image,
                "image_safe": entry["safe"],
            }
            if not entry["safe"] and isinstance(entry.get("harmful_subcategory"), str):
                meta["subcategory"] = entry["harmful_subcategory"]
            w = f"{where} instr-resp[{j}]"
            try:
                if kind == "sft":
                    if not resp.strip():
                        raise DataError(f"{w}: empty response")
                    rec = make_record("sft", {"prompt": instr, "response": resp, "meta": meta}, w)
                else:
                    rec = make_record(
                        "eval",
                        {
                            "prompt": instr,
                            "label": "harmful" if harmful else "benign",
                            "category": category,
                            "reference": resp or None,
                            "meta": meta,
                        },
                        w,
                    )
            except DataError as e:
                yield e
                continue
            yield Item(sanitize_key(f"{eid}-{j}", seen), rec, [data], w)
