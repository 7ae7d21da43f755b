"""The bad-sample policy (`data.on_error: raise | skip`) and the counter of skipped samples.

Skips are never silent: each is logged once as a warning, counted in a `SkipCounter`, and the
streaming batches carry `n_skipped` so training reports it in its step metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from vlalign.errors import DataError

OnError = Literal["raise", "skip"]
MAX_REASONS = 100
log = logging.getLogger("data_pipeline")


@dataclass
class SkipCounter:
    """Skipped samples: `count` (exact) and the first `MAX_REASONS` reasons (shard, key, why)."""

    count: int = 0
    reasons: list[str] = field(default_factory=list)

    def add(self, reason: str, n: int = 1) -> None:
        self.count += n
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason if n == 1 else f"{reason} [{n} samples]")
        log.warning("skipped %d sample(s): %s", n, reason)

    def merge(self, count: int, reasons: list[str]) -> None:
        """Add counts reported by another process (e.g. a DataLoader worker), without re-logging."""
        self.count += count
        room = MAX_REASONS - len(self.reasons)
        if room > 0:
            self.reasons.extend(reasons[:room])

    def take(self) -> tuple[int, list[str]]:
        """(count, reasons) since the last take, then reset (workers ship deltas with batches)."""
        out = (self.count, list(self.reasons))
        self.count, self.reasons = 0, []
        return out


def check_policy(on_error: str) -> OnError:
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error  # type: ignore[return-value]


def handle(err: DataError, on_error: OnError, skips: SkipCounter | None, n: int = 1) -> None:
    """Raise `err` (policy raise) or count it as `n` skipped samples (policy skip)."""
    if on_error == "raise":
        raise err
    if skips is None:
        log.warning("skipped %d sample(s): %s", n, err)
    else:
        skips.add(str(err), n)
