"""Writing shard sets: webdataset tar shards bounded by samples and bytes, then the manifest.

    with ShardSetWriter(out_dir, source="vlguard") as w:
        w.write("train", "sft", record, [jpeg_bytes], key="000123")
    # manifest.json is written when the block exits without an exception

Shards hold at most `max_samples` samples and roll over before a sample would take them past
`max_bytes` (a single larger sample gets a shard of its own; tar pads files to 10 KiB records).

Atomicity: a shard is written under a hidden temp name (`.train-000000.tar.tmp-PID`), fsynced
and renamed only when complete; the manifest is written last, atomically. Replacing a split
writes the new shards beside the old ones (names that the old split does not use, e.g.
`train-000000-1a2b3c4d.tar` with the shard's sha256 prefix), switches the manifest to them in
one atomic rename, and only then deletes the old shards: until the new split is complete the
old one stays listed and readable. An interrupted write leaves no manifest entry for anything
it wrote (hidden temp files and unlisted shards may remain; they are never read), and removes
an output directory it created that stayed empty. A full disk (or any OS error) while writing
is a DataError naming the file.

Images are stored as given (their original encoding); the extension is sniffed from the
bytes. Tar members carry a fixed mtime so the same data gives the same bytes and digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image

from data_pipeline.defaults import DEFAULT_MAX_BYTES, DEFAULT_MAX_SAMPLES
from data_pipeline.manifest import (
    MANIFEST,
    Manifest,
    ShardInfo,
    fsync_dir,
    load_manifest,
    make_split,
    write_manifest,
)
from data_pipeline.schemas import _Record, check_key
from vlalign.errors import DataError

FIXED_MTIME = 946684800  # 2000-01-01, an int (a float adds a PAX header per member)
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def image_extension(data: bytes) -> str:
    """File extension of encoded image bytes, from the header (DataError if not an image)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
    except Exception as e:
        raise DataError(f"not a readable image ({e.__class__.__name__}: {e})") from None
    if fmt not in _EXT:
        raise DataError(f"unsupported image format {fmt!r} (supported: {', '.join(_EXT)})")
    return _EXT[fmt]


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _os_error(path: Path, e: OSError) -> DataError:
    """An OS error while writing (ENOSPC, EACCES, ...) as a DataError naming the file."""
    return DataError(f"{path}: cannot write: {e.strerror or e}")


class _SplitWriter:
    """Writes one split's shards; rolls to a new shard at `max_samples` or `max_bytes`.

    `taken` are shard names the shard set already lists for this split (a split being
    replaced): a new shard never takes one of them."""

    def __init__(
        self,
        directory: Path,
        name: str,
        kind: str,
        max_samples: int,
        max_bytes: int,
        taken: frozenset[str] = frozenset(),
    ) -> None:
        self.directory = directory
        self.name = name
        self.kind = kind
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.taken = taken
        self.shards: list[ShardInfo] = []
        self.keys: set[str] = set()
        self._file: Any = None
        self._tar: wds.TarWriter | None = None
        self._tmp: Path | None = None
        self._count = 0

    def _open(self) -> None:
        final = f"{self.name}-{len(self.shards):06d}.tar"
        self._tmp = self.directory / f".{final}.tmp-{os.getpid()}"
        try:
            self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in _close_shard / abort
        except OSError as e:
            raise _os_error(self._tmp, e) from None
        self._tar = wds.TarWriter(self._file, mtime=FIXED_MTIME, encoder=False)
        self._count = 0

    def write(self, record: _Record, images: list[bytes], key: str) -> None:
        if record.kind != self.kind:
            raise DataError(
                f"split {self.name!r} holds {self.kind} records, got a {record.kind} record"
            )
        check_key(key)
        if key in self.keys:
            raise DataError(f"split {self.name!r}: duplicate sample key {key!r}")
        names = []
        for i, data in enumerate(images):
            try:
                names.append(f"img{i}.{image_extension(data)}")
            except DataError as e:
                raise DataError(f"split {self.name!r} key {key!r} image {i}: {e}") from None
        if names != record.images:
            record = record.model_copy(update={"images": names})
        sample: dict[str, Any] = {
            "__key__": key,
            "json": record.model_dump_json(exclude_none=True).encode("utf-8"),
        }
        for name, data in zip(names, images, strict=True):
            sample[name] = bytes(data)
        size = sum(512 + -(-len(v) // 512) * 512 for k, v in sample.items() if k != "__key__")
        if self._tar is not None and self._tar.tarstream.offset + size + 1024 > self.max_bytes:
            self._close_shard()  # roll over before a sample would cross the byte bound
        if self._tar is None:
            self._open()
        assert self._tar is not None
        try:
            self._tar.write(sample)
        except OSError as e:
            raise _os_error(self._tmp or self.directory, e) from None
        self.keys.add(key)
        self._count += 1
        if self._count >= self.max_samples:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        assert self._tmp is not None
        try:
            self._tar.close()  # writes the tar end blocks; the file object stays ours
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            h = hashlib.sha256()
            with open(self._tmp, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            size = self._tmp.stat().st_size
            final = self.directory / f"{self.name}-{len(self.shards):06d}.tar"
            if final.name in self.taken:  # the split being replaced still lists that name
                final = final.with_name(f"{final.stem}-{h.hexdigest()[:8]}.tar")
            os.replace(self._tmp, final)
        except OSError as e:
            raise _os_error(self._tmp, e) from None
        self.shards.append(
            ShardInfo(name=final.name, samples=self._count, bytes=size, sha256=h.hexdigest())
        )
        self._tar = self._file = self._tmp = None

    def finish(self) -> list[ShardInfo]:
        self._close_shard()
        return self.shards

    def abort(self) -> None:
        """Drop the unfinished shard. Never raises an OS error: on a full disk, closing the
        file fails again (its buffered bytes cannot be flushed), and those bytes are being
        discarded anyway; the error that caused the abort is the one to report."""
        if self._tar is not None:
            with contextlib.suppress(Exception):
                self._tar.close()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()  # the descriptor is closed even when the flush fails
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink(missing_ok=True)
        self._tar = self._file = self._tmp = None


class ShardSetWriter:
    """Writes splits of a shard set into `directory`; the manifest is written on `close()`.

    An existing shard set in `directory` keeps its other splits; writing a split it already
    holds needs `overwrite=True`.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        source: str = "",
        info: dict[str, Any] | None = None,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        overwrite: bool = False,
    ) -> None:
        if max_samples < 1 or max_bytes < 1:
            raise DataError("shard bounds must be positive")
        self.directory = Path(directory)
        self._created = _missing_dirs(self.directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _os_error(self.directory, e) from None
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.overwrite = overwrite
        self.manifest = (
            load_manifest(self.directory)
            if (self.directory / MANIFEST).is_file()
            else Manifest(source=source)
        )
        if source:
            self.manifest.source = source
        self.manifest.info.update(info or {})
        self._splits: dict[str, _SplitWriter] = {}
        self._shifts: dict[str, str | None] = {}
        self._replaced: dict[str, list[str]] = {}  # split -> shard names it listed before
        self.closed = False
        self._committed = False  # the manifest listing this write's shards is on disk

    def _split(self, name: str, kind: str) -> _SplitWriter:
        sw = self._splits.get(name)
        if sw is not None:
            if sw.kind != kind:
                raise DataError(f"split {name!r} holds {sw.kind} records, not {kind}")
            return sw
        check_key(name)
        if name in self.manifest.splits:
            if not self.overwrite:
                raise DataError(
                    f"{self.directory}: split {name!r} exists (use overwrite to replace it)"
                )
            self._replaced[name] = [s.name for s in self.manifest.splits[name].shards]
        sw = _SplitWriter(
            self.directory,
            name,
            kind,
            self.max_samples,
            self.max_bytes,
            taken=frozenset(self._replaced.get(name, ())),
        )
        self._splits[name] = sw
        return sw

    def _delete_replaced(self) -> None:
        """Delete the shards of replaced splits that the new manifest no longer lists."""
        listed = {s.name for sp in self.manifest.splits.values() for s in sp.shards}
        for names in self._replaced.values():
            for n in names:
                if n not in listed:
                    (self.directory / n).unlink(missing_ok=True)
        fsync_dir(self.directory)

    def write(self, split: str, record: _Record, images: list[bytes], key: str) -> None:
        """Append one sample (record + encoded images) to `split` under `key`."""
        if self.closed:
            raise DataError("writer is closed")
        self._split(split, record.kind).write(record, images, key)

    def mark_shift(self, split: str, shift: str | None) -> None:
        """Record in the manifest how eval split `split` departs from training (None: it does
        not), e.g. "visual" or a benchmark's "no-leak"; applied when the split is written."""
        self._shifts[check_key(split)] = shift

    def close(self) -> Manifest:
        """Finish every shard and write the manifest (atomically, last)."""
        if self.closed:
            return self.manifest
        for name, sw in self._splits.items():
            self.manifest.splits[name] = make_split(name, sw.kind, sw.finish())
        for name, shift in self._shifts.items():
            if name in self.manifest.splits:
                self.manifest.splits[name].shift = shift
        fsync_dir(self.directory)
        self.manifest.created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            write_manifest(self.directory, self.manifest)
        except OSError as e:
            raise _os_error(self.directory / MANIFEST, e) from None
        self.closed = self._committed = True
        self._delete_replaced()  # only now: the old shards were listed until this instant
        return self.manifest

    def abort(self) -> None:
        """Drop unfinished shards; write no manifest for this write's splits (replaced splits
        keep their old shards, still listed); remove output directories this writer created
        when they stayed empty."""
        if self._committed:
            return
        for sw in self._splits.values():
            sw.abort()
            for info in sw.shards:  # finished but never listed: nothing would ever read them
                (self.directory / info.name).unlink(missing_ok=True)
        self.closed = True
        for d in self._created:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()  # only succeeds when empty

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def _missing_dirs(directory: Path) -> list[Path]:
    """`directory` and its ancestors that do not exist yet, deepest first."""
    out = []
    d = directory.absolute()
    while not d.exists() and d != d.parent:
        out.append(d)
        d = d.parent
    return out
