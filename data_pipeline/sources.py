"""Opening shard sets by location: local directories, file://, http(s)://, s3:// and pipe: URLs.

Streams come from webdataset's `gopen` (local files; http(s) through the `curl` binary; pipe:
commands). webdataset has no s3 handler: s3:// goes through fsspec when `s3fs` is installed,
otherwise through the AWS CLI as `pipe:aws s3 cp URL -`.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import BinaryIO

import webdataset as wds

from vlalign.errors import DataError

REMOTE_SCHEMES = ("http://", "https://", "s3://", "pipe:", "file://")


def is_remote(location: str) -> bool:
    return str(location).startswith(REMOTE_SCHEMES)


def join(location: str, name: str) -> str:
    """`location/name` for a directory or a URL prefix."""
    loc = str(location)
    if loc.startswith("pipe:"):
        raise DataError(f"{loc}: a shard set location cannot be a pipe: command")
    if is_remote(loc):
        return loc.rstrip("/") + "/" + name
    return str(Path(loc) / name)


def s3_to_opener(url: str) -> str:
    """The URL webdataset's gopen opens for an s3:// URL when fsspec/s3fs is absent."""
    return f"pipe:aws s3 cp --only-show-errors {url} -"


def has_s3fs() -> bool:
    return importlib.util.find_spec("s3fs") is not None


def open_url(url: str) -> BinaryIO:
    """A binary read stream for a local path or URL (DataError naming the URL when it fails)."""
    try:
        if url.startswith("s3://"):
            if has_s3fs():
                import fsspec

                return fsspec.open(url, "rb").open()
            return wds.gopen(s3_to_opener(url), "rb")
        return wds.gopen(url, "rb")
    except FileNotFoundError:
        raise DataError(f"{url}: no such file") from None
    except Exception as e:
        raise DataError(f"{url}: cannot open ({e})") from None


def read_bytes(url: str) -> bytes:
    """The whole content of a (small) file or URL, e.g. a manifest."""
    stream = open_url(url)
    try:
        data = stream.read()
        stream.close()
    except DataError:
        raise
    except Exception as e:  # curl -f exits non-zero on HTTP errors: the Pipe raises on close
        raise DataError(f"{url}: cannot read ({e})") from None
    return data


class HashingReader:
    """Wraps a stream, hashing (sha256) and counting every byte read through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.sha.update(data)
        self.nbytes += len(data)
        return data

    def drain(self) -> None:
        """Read to the end (tar readers stop before the trailing zero blocks)."""
        while self.read(1 << 20):
            pass

    def hexdigest(self) -> str:
        return self.sha.hexdigest()

    def close(self) -> None:
        self.stream.close()
