"""Raw samples out of one tar shard (webdataset's tar iterator), with errors naming shard and key.

A raw sample is `{"__key__": str, "__shard__": str, "json": bytes, "img0.png": bytes, ...}`.
The stream is hashed as it is read; at the end of the shard the sha256 and the sample count
are compared with the manifest. Problems raise `DataError` naming the shard and the last key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from webdataset.tariterators import base_plus_ext, tar_file_iterator

from data_pipeline.sources import HashingReader, open_url
from vlalign.errors import DataError


class ShardError(DataError):
    """A shard-level problem (unreadable, truncated, hash or count mismatch).

    `lost` is how many of the manifest's samples were not delivered (0 when all were).
    """

    def __init__(self, message: str, shard: str, key: str | None, lost: int = 0) -> None:
        super().__init__(message)
        self.shard = shard
        self.key = key
        self.lost = lost


def iter_shard(
    url: str,
    shard: str,
    *,
    sha256: str | None = None,
    samples: int | None = None,
    verify: bool = True,
) -> Iterator[dict]:
    """Yield the raw samples of one shard in stored order.

    `shard` is the name used in messages. With `verify`, the bytes read are checked against
    `sha256` and the sample count against `samples` once the shard is read to its end.
    """
    stream = open_url(url)
    reader = HashingReader(stream)
    current: dict | None = None
    last_key: str | None = None
    n = 0

    def fail(reason: str) -> ShardError:
        where = f"after key {last_key!r}" if last_key is not None else "at its start"
        lost = max(0, samples - n) if samples is not None else 0
        return ShardError(
            f"shard {shard}: {reason} ({where}; {n} samples read)", shard, last_key, lost
        )

    done = False
    try:
        for member in tar_file_iterator(reader):
            fname = member["fname"]
            prefix, suffix = base_plus_ext(fname)
            if prefix is None:
                raise fail(f"member {fname!r} has no extension")
            if current is not None and prefix != current["__key__"]:
                last_key = current["__key__"]
                n += 1
                yield current
                current = None
            if current is None:
                current = {"__key__": prefix, "__shard__": shard}
            suffix = suffix.lower()
            if suffix in current:
                raise fail(f"key {prefix!r} has two members named {suffix!r}")
            current[suffix] = member["data"]
        reader.drain()
        done = True
        reader.close()  # a failed curl / pipe command raises here
    except DataError:
        raise
    except Exception as e:  # tarfile.ReadError, EOF, curl exit status, ...
        raise fail(f"unreadable or truncated tar ({e.__class__.__name__}: {e})") from None
    finally:
        if not done:
            with contextlib.suppress(Exception):
                reader.close()
    # The last sample is held back until the whole shard is checked: a tar cut at a block
    # boundary reads as a shorter valid tar, and only the count / hash tell.
    total = n + (current is not None)
    if verify and samples is not None and total != samples:
        raise ShardError(
            f"shard {shard}: holds {total} samples, the manifest says {samples}: truncated or "
            f"rewritten (after key {last_key!r})",
            shard,
            last_key,
            max(0, samples - n),
        )
    if verify and sha256 is not None and reader.hexdigest() != sha256:
        raise ShardError(
            f"shard {shard}: sha256 {reader.hexdigest()[:16]}… does not match the manifest's "
            f"{sha256[:16]}… (truncated or rewritten; last key read "
            f"{current['__key__'] if current else last_key!r})",
            shard,
            current["__key__"] if current else last_key,
            max(0, samples - n) if samples is not None and total != samples else 0,
        )
    if current is not None:
        yield current
