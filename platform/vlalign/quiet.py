"""A person's terminal apart from the full logs: status lines and one progress bar per stage on
the terminal, everything else (Ray, DeepSpeed, the workers, third-party warnings) in a log file.

    with logs_to_file(out / "demo.log") as term:       # fd 1 and 2 -> the log file
        print("status", file=term)                       # the terminal
        with follow_steps(progress_file, total, "sft", term) as hook:
            run_on_ray(recipe, on_step=hook)             # workers report steps; one bar here

`logs_to_file` points file descriptors 1 and 2 (so child processes, Ray's log forwarding and C
libraries too) and sys.stdout / sys.stderr at the log; it yields a stream to what was the
terminal. On an exception it shows the log's tail on the terminal before the error propagates.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

TAIL_LINES = 40


def tail(path: str | Path, n: int = TAIL_LINES) -> str:
    """The last `n` lines of a text file (carriage-return redraws collapsed)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(line for line in lines[-n:])


def _terminal() -> tuple[TextIO, bool]:
    """A stream to where sys.stdout writes now, unaffected by redirecting fd 1; and whether it
    is a new stream (to close) rather than sys.stdout itself (a replaced stdout, e.g. captured)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return sys.stdout, False
    if fd not in (1, 2):
        return sys.stdout, False
    sys.stdout.flush()
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace"), True


@contextlib.contextmanager
def logs_to_file(path: str | Path) -> Iterator[TextIO]:
    """fd 1/2 and sys.stdout/sys.stderr -> `path` (appended); yields the terminal's stream."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    term, owned = _terminal()
    sys.stderr.flush()
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    saved = (os.dup(1), os.dup(2))
    old_streams = (sys.stdout, sys.stderr)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    try:
        yield term
    except BaseException:
        log.flush()
        print(f"\nfailed; the last lines of {path}:", file=term)
        print(tail(path), file=term)
        print(f"(full log: {path})", file=term, flush=True)
        raise
    finally:
        log.flush()
        sys.stdout, sys.stderr = old_streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        log.close()
        if owned:
            term.close()
        else:
            term.flush()


class StepFile:
    """A training `on_step` hook (picklable, runs in the workers): rank 0 writes the latest step
    and loss to a small JSON file that a driver reads (written whole, then renamed)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def __call__(self, step: int, metrics: dict) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"step": int(step), "loss": float(metrics.get("loss", float("nan")))}, f)
        os.replace(tmp, self.path)


def read_step(path: str | Path) -> dict | None:
    """The last step a StepFile wrote, or None."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def follow_steps(path: str | Path, total: int, desc: str, term: TextIO) -> Iterator[StepFile]:
    """One progress bar on `term`, fed by the StepFile at `path` (polled twice a second) until
    the block ends; yields the hook to hand to the training workers."""
    from tqdm import tqdm

    path = Path(path)
    path.unlink(missing_ok=True)
    live = term.isatty()
    bar = tqdm(
        total=total,
        desc=desc,
        unit="step",
        file=term,
        position=0,
        dynamic_ncols=live,
        ncols=None if live else 80,
        mininterval=0.5 if live else 30.0,
    )
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.5):
            _show(bar, read_step(path))

    thread = threading.Thread(target=poll, name=f"progress-{desc}", daemon=True)
    thread.start()
    try:
        yield StepFile(path)
    finally:
        done.set()
        thread.join()
        _show(bar, read_step(path))
        bar.close()


def _show(bar, state: dict | None) -> None:
    if not state or state["step"] <= bar.n:
        return
    bar.set_postfix_str(f"loss={state['loss']:.4f}", refresh=False)
    bar.update(state["step"] - bar.n)
