"""Ray jobs of a cluster: connect to its dashboard, list, read or follow logs, stop.

All calls go through Ray's JobSubmissionClient (the dashboard's REST API), with the bearer
token of `vlalign.orchestration.auth` when the cluster uses token authentication.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TextIO

from vlalign.errors import VlalignError
from vlalign.orchestration.auth import auth_headers

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def resolve_address(address: str | None) -> str:
    """The dashboard address to use: the argument, else RAY_API_SERVER_ADDRESS, else an
    http(s) RAY_ADDRESS. Raises VlalignError when none is given."""
    if address:
        return address if "://" in address else f"http://{address}"
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(var, "")
        if value.startswith(("http://", "https://")):
            return value
    raise VlalignError(
        "no Ray dashboard address: pass --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)"
    )


@contextmanager
def ray_errors(address: str) -> Iterator[None]:
    """Turn the client's connection, authentication and request errors into VlalignError."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as e:
        first = str(e).strip().splitlines()[0]
        raise VlalignError(
            f"the Ray cluster at {address} refused the request ({first}); give its token with "
            "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (on the head: `ray get-auth-token`)"
        ) from None
    except ConnectionError as e:
        raise VlalignError(f"cannot reach the Ray dashboard at {address}: {e}") from None
    except RuntimeError as e:
        raise VlalignError(f"Ray job API at {address}: {e}") from None


NO_AGENT = "No available agent to submit job"  # the head's job agent has not registered yet
AGENT_WAIT_S = 60.0


def submit_with_agent_wait(
    client: JobSubmissionClient,
    *,
    wait_s: float = AGENT_WAIT_S,
    **job: object,
) -> str:
    """`client.submit_job(**job)`, retried while the dashboard answers that no job agent is
    available yet (a cluster that has just started: Ray asks to "try again later"), for up to
    `wait_s` seconds; any other error, or the same one after `wait_s`, is raised as is."""
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if NO_AGENT not in str(e) or time.monotonic() >= deadline:
                raise
            if not told:
                print(
                    f"the cluster's job agent is not up yet: retrying for up to {wait_s:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                told = True
            time.sleep(1.0)


def connect(address: str | None) -> JobSubmissionClient:
    """A JobSubmissionClient for the cluster whose dashboard is at `address` (http://HOST:8265)."""
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    with ray_errors(url):
        return JobSubmissionClient(url, headers=auth_headers())


@dataclass(frozen=True)
class JobRow:
    """One line of `vlalign jobs list`."""

    job_id: str
    status: str
    start: str
    entrypoint: str


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def list_jobs(address: str | None) -> list[JobRow]:
    """Submitted jobs of the cluster, oldest first."""
    client = connect(address)
    with ray_errors(client.get_address()):
        details = client.list_jobs()
    details = [d for d in details if d.submission_id]  # drivers not submitted as jobs have none
    details.sort(key=lambda d: d.start_time or 0)
    return [
        JobRow(d.submission_id or "", str(d.status), _when(d.start_time), d.entrypoint)
        for d in details
    ]


def job_logs(address: str | None, job_id: str) -> str:
    """The whole log of a job so far."""
    client = connect(address)
    with ray_errors(client.get_address()):
        return client.get_job_logs(job_id)


def stop_job(address: str | None, job_id: str) -> bool:
    """Ask a job to stop; True when it was running."""
    client = connect(address)
    with ray_errors(client.get_address()):
        return client.stop_job(job_id)


def job_status(client: JobSubmissionClient, job_id: str) -> tuple[str, str]:
    """(status, message) of a job."""
    with ray_errors(client.get_address()):
        info = client.get_job_info(job_id)
    return str(info.status), info.message or ""


def follow(
    client: JobSubmissionClient,
    job_id: str,
    out: TextIO | None = None,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
) -> str:
    """Stream a job's logs to `out` until it ends; returns its final status.

    Uses the dashboard's log websocket (tail_job_logs); if that stream breaks (proxies that drop
    websockets), continues by polling get_job_logs and printing what is new.
    """
    out = out or sys.stdout
    printed = 0

    def write(chunk: str) -> None:
        nonlocal printed
        printed += len(chunk)
        out.write(chunk)
        out.flush()

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    # A broken stream (or the timeout) falls through to polling, which also enforces the deadline.
    with suppress(RuntimeError, OSError, asyncio.TimeoutError):
        asyncio.run(_with_timeout(tail(), timeout_s))
    return _poll_until_done(client, job_id, printed, write, poll_s, deadline)


async def _with_timeout(coro, timeout_s: float | None) -> None:
    await asyncio.wait_for(coro, timeout_s)


def _poll_until_done(
    client: JobSubmissionClient,
    job_id: str,
    printed: int,
    write: Callable[[str], None],
    poll_s: float,
    deadline: float | None,
) -> str:
    while True:
        status, _ = job_status(client, job_id)
        with ray_errors(client.get_address()):
            logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            write(logs[printed:])
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise VlalignError(f"job {job_id} still {status} after the follow timeout")
        time.sleep(poll_s)
