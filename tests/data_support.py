"""Helpers of the data-pipeline tests: small shard sets, tampering with shards, encoders."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from data_pipeline.manifest import finalize, load_manifest, make_split, write_manifest


def members(shard: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(shard) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isreg()]


def write_members(shard: Path, items: list[tuple[str, bytes]]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in items:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())


def replace_member(shard: Path, name: str, data: bytes | None) -> None:
    """Replace (or with None delete) one member of a tar shard."""
    items = members(shard)
    assert any(n == name for n, _ in items), f"{name} not in {shard}"
    out = [(n, data if n == name else d) for n, d in items if not (n == name and data is None)]
    write_members(shard, out)


def refresh_manifest(directory: Path) -> None:
    """Recompute sha256/bytes/samples of every shard so only the tampered content is wrong."""
    m = load_manifest(directory)
    for name, sp in list(m.splits.items()):
        shards = []
        for s in sp.shards:
            p = directory / s.name
            data = p.read_bytes()
            keys = {n.split(".", 1)[0] for n, _ in members(p)}
            shards.append(
                s.model_copy(
                    update={
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "bytes": len(data),
                        "samples": len(keys),
                    }
                )
            )
        m.splits[name] = make_split(name, sp.kind, shards)
    write_manifest(directory, finalize(m))


def first_key(shard: Path) -> str:
    return members(shard)[0][0].split(".", 1)[0]


def encoder_for(name: str, cache_dir: str, max_length: int = 128):
    from vlalign.config.schema import ModelConfig
    from vlalign.models.builder import detect_family, resolve_source
    from vlalign.models.inputs import ChatEncoder
    from vlalign.models.processors import load_processor

    cfg = ModelConfig(name=name, cache_dir=cache_dir)
    src = resolve_source(cfg)
    family = detect_family(cfg, src)
    return ChatEncoder(load_processor(src, family), family, max_length)
