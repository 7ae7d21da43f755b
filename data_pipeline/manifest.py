"""`manifest.json`: what a shard set holds and its identity (the dataset digest).

    {"format": "vlalign.shards/1",
     "splits": {"train": {"kind": "preference", "schema_version": 1, "samples": N, "bytes": B,
                          "digest": "sha256:...",
                          "shards": [{"name": "train-000000.tar", "samples": n, "bytes": b,
                                      "sha256": "..."}],
                          "shift": null}},
     "total_samples": N, "total_bytes": B, "dataset_digest": "sha256:...",
     "source": "synth", "created": "2026-...Z", "info": {...}}

`shift` marks an eval split that departs from the training distribution on purpose (synth's
shift-visual / shift-wording / shift-both, a benchmark's no-leak subset); evaluation reports it.
A split's digest is sha256 over its name, kind, schema version and its shards' sha256 in name
order; the dataset digest is sha256 over the split digests in name order. Both depend on
content only (tar members carry a fixed mtime), so the same data written twice has the same
digest. The manifest is written last and atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_pipeline.schemas import KINDS, SCHEMA_VERSION
from data_pipeline.sources import join, read_bytes
from vlalign.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "vlalign.shards/1"


class ShardInfo(BaseModel):
    """One tar shard."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z0-9_\-]+\.tar$")
    samples: int = Field(..., ge=0)
    bytes: int = Field(..., ge=0)
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")


class SplitInfo(BaseModel):
    """One split: its kind, schema version and shards."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["sft", "preference", "eval"]
    schema_version: int
    shards: list[ShardInfo]
    samples: int = Field(..., ge=0)
    bytes: int = Field(..., ge=0)
    digest: str
    shift: str | None = Field(
        None,
        description="How this eval split departs from training (e.g. visual, wording, no-leak); "
        "None: in distribution. Metadata only: not part of the digest.",
    )


class Manifest(BaseModel):
    """The whole shard set."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["vlalign.shards/1"] = FORMAT
    splits: dict[str, SplitInfo] = Field(default_factory=dict)
    total_samples: int = 0
    total_bytes: int = 0
    dataset_digest: str = ""
    source: str = ""
    created: str = ""
    info: dict[str, Any] = Field(default_factory=dict)

    def split(self, name: str | None, where: str = MANIFEST) -> tuple[str, SplitInfo]:
        """(name, split); `None` picks the only split (DataError naming the choices otherwise)."""
        if name is None:
            if len(self.splits) != 1:
                raise DataError(
                    f"{where}: name a split (holds {', '.join(sorted(self.splits)) or 'none'})"
                )
            name = next(iter(self.splits))
        if name not in self.splits:
            raise DataError(
                f"{where}: no split {name!r} (holds {', '.join(sorted(self.splits)) or 'none'})"
            )
        return name, self.splits[name]


def split_digest(name: str, kind: str, version: int, shards: list[ShardInfo]) -> str:
    h = hashlib.sha256(f"split={name}\nkind={kind}\nversion={version}\n".encode())
    for s in sorted(shards, key=lambda s: s.name):
        h.update(f"{s.name} {s.samples} {s.sha256}\n".encode())
    return "sha256:" + h.hexdigest()


def dataset_digest(splits: dict[str, SplitInfo]) -> str:
    h = hashlib.sha256(f"{FORMAT}\n".encode())
    for name in sorted(splits):
        h.update(f"{name} {splits[name].digest}\n".encode())
    return "sha256:" + h.hexdigest()


def make_split(name: str, kind: str, shards: list[ShardInfo]) -> SplitInfo:
    if kind not in KINDS:
        raise DataError(f"split {name!r}: unknown kind {kind!r}")
    return SplitInfo(
        kind=kind,  # type: ignore[arg-type]
        schema_version=SCHEMA_VERSION,
        shards=shards,
        samples=sum(s.samples for s in shards),
        bytes=sum(s.bytes for s in shards),
        digest=split_digest(name, kind, SCHEMA_VERSION, shards),
    )


def finalize(manifest: Manifest) -> Manifest:
    """Recompute totals and the dataset digest."""
    manifest.total_samples = sum(s.samples for s in manifest.splits.values())
    manifest.total_bytes = sum(s.bytes for s in manifest.splits.values())
    manifest.dataset_digest = dataset_digest(manifest.splits)
    return manifest


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Parse and check a manifest (DataError naming `where` and the field)."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{where}: not valid UTF-8 JSON: {e}") from None
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise DataError(f"{where}: {loc}: {first['msg']}") from None
    for name, sp in m.splits.items():
        if sp.schema_version > SCHEMA_VERSION:
            raise DataError(
                f"{where}: split {name!r} has schema version {sp.schema_version}, newer than "
                f"this vlalign reads ({SCHEMA_VERSION}): upgrade vlalign"
            )
        if sp.samples != sum(s.samples for s in sp.shards):
            raise DataError(f"{where}: split {name!r}: samples does not match its shards")
        if sp.digest != split_digest(name, sp.kind, sp.schema_version, sp.shards):
            raise DataError(f"{where}: split {name!r}: digest does not match its shards")
    if m.dataset_digest != dataset_digest(m.splits):
        raise DataError(f"{where}: dataset_digest does not match the splits")
    return m


def load_manifest(location: str | Path) -> Manifest:
    """The manifest of a shard set directory or URL prefix."""
    url = join(str(location), MANIFEST)
    if "://" not in str(location) and not Path(url).is_file():
        hint = ""
        if Path(location).is_dir() and any(Path(location).glob("*.tar")):
            hint = " (shards without a manifest: an interrupted write?)"
        raise DataError(f"{location}: no {MANIFEST}{hint}")
    return parse_manifest(read_bytes(url), url)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file, fsync and rename (readers never see a part)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    finalize(manifest)
    data = json.dumps(manifest.model_dump(), indent=1, sort_keys=False).encode("utf-8") + b"\n"
    atomic_write(directory / MANIFEST, data)


def remove_manifest(directory: Path) -> None:
    p = directory / MANIFEST
    if p.exists():
        p.unlink()
        fsync_dir(directory)
