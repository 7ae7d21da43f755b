"""`vlalign data validate DIR`: every check a shard set can fail, each problem named.

Checks the manifest (structure, split and dataset digests), then for every shard: that it
opens, reads to its end as a tar, matches the manifest's sha256 and sample count; and for every
sample: a UTF-8 JSON record that satisfies its kind's schema, every listed image present and
decodable, no unlisted member, no duplicate key within the split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tqdm import tqdm

from data_pipeline.decode import decode_sample
from data_pipeline.manifest import MANIFEST, load_manifest
from data_pipeline.shards import ShardError, iter_shard
from data_pipeline.sources import join
from vlalign.errors import DataError


@dataclass
class Problem:
    """One bad thing: where (split, shard, key) and why."""

    split: str
    shard: str
    key: str | None
    reason: str

    def __str__(self) -> str:
        key = f" key {self.key}" if self.key else ""
        return f"{self.split}/{self.shard}{key}: {self.reason}"


@dataclass
class ValidationReport:
    """What was checked and what failed."""

    location: str
    digest: str = ""
    samples: int = 0
    shards: int = 0
    images: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _reason(err: DataError, shard: str, key: str | None) -> str:
    """The message without the "shard X key Y: " prefix the report already shows."""
    msg = str(err)
    for prefix in (f"shard {shard} key {key!r}: ", f"shard {shard}: "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def validate(
    location: str, splits: list[str] | None = None, *, progress: bool = False
) -> ValidationReport:
    """Check a shard set; problems are collected (not raised), except a missing/bad manifest."""
    manifest = load_manifest(location)
    report = ValidationReport(location=str(location), digest=manifest.dataset_digest)
    names = splits or sorted(manifest.splits)
    for name in names:
        if name not in manifest.splits:
            report.problems.append(Problem(name, MANIFEST, None, "no such split"))
    names = [n for n in names if n in manifest.splits]
    total = sum(manifest.splits[n].samples for n in names)
    bar = tqdm(total=total, desc="validate", unit="sample", disable=not progress)
    for name in names:
        sp = manifest.splits[name]
        seen: set[str] = set()
        for shard in sp.shards:
            report.shards += 1
            key: str | None = None
            try:
                for raw in iter_shard(
                    join(str(location), shard.name),
                    shard.name,
                    sha256=shard.sha256,
                    samples=shard.samples,
                ):
                    key = raw["__key__"]
                    report.samples += 1
                    bar.update(1)
                    if key in seen:
                        report.problems.append(Problem(name, shard.name, key, "duplicate key"))
                    seen.add(key)
                    try:
                        s = decode_sample(raw, sp.kind)
                        report.images += len(s["images"])
                    except DataError as e:
                        report.problems.append(
                            Problem(name, shard.name, key, _reason(e, shard.name, key))
                        )
            except ShardError as e:
                report.problems.append(
                    Problem(name, shard.name, e.key, _reason(e, shard.name, key))
                )
            except DataError as e:  # cannot open
                report.problems.append(Problem(name, shard.name, None, str(e)))
    bar.close()
    return report
