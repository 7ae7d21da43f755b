"""The Ray cluster a run uses: join one (an address) or start a local one sized for this machine.

- An address (argument, else RAY_ADDRESS, else the recipe's resources.address) joins that
  cluster. A loopback address (127.0.0.1 / localhost) means a head started by
  cluster/local/start-head.sh, which runs Ray in local-only mode; the client must use the same
  mode or Ray rewrites 127.0.0.1 to the machine's network address and never connects.
- No address: `ray.init(address="local")` starts a fresh in-process cluster (never attaching to a
  stale `ray_current_cluster` file) in local-only mode, bound to 127.0.0.1, with at least 4
  logical CPUs: on a 2-core machine two 1-CPU training workers would otherwise leave nothing for
  Ray Data read tasks and the run would hang.
- Joining a cluster with token authentication needs no RAY_AUTH_MODE in the shell when a token
  is found (the way `ray start` decides for a head).
- A process where Ray is already initialized keeps its connection (and it is not shut down).
- Before joining, the address is probed (a TCP connect, PROBE_TIMEOUT_S): a closed port or an
  unknown host fails at once with a line naming the address, where ray.init would retry for a
  minute without heeding SIGTERM.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from vlalign.config.schema import Recipe
from vlalign.errors import VlalignError

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
PROBE_TIMEOUT_S = 5.0
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def resolve_address(address: str | None, recipe: Recipe) -> str | None:
    """The cluster to join: the argument, RAY_ADDRESS (set inside Ray jobs), the recipe; or None."""
    return address or os.environ.get("RAY_ADDRESS") or recipe.resources.address or None


def is_loopback(address: str) -> bool:
    """True for 127.0.0.1:6379, localhost:6379, ray://127.0.0.1:10001 and the like."""
    host = urlsplit(address if "://" in address else f"//{address}").hostname or ""
    return host in _LOOPBACK or host.startswith("127.")


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise VlalignError naming `address` when nothing accepts a TCP connection there.

    `auto` (a cluster found on this machine) is left to Ray; a missing port means Ray's
    defaults: 6379 (GCS) or 10001 (ray:// client)."""
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        raise VlalignError(f"Ray address {address!r}: the port is not a number") from None
    host = parts.hostname
    if not host:
        raise VlalignError(f"Ray address {address!r}: expected HOST:PORT or ray://HOST:PORT")
    port = port or (10001 if parts.scheme == "ray" else 6379)
    error: list[str] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            error.append(e.strerror or str(e) or type(e).__name__)

    t = threading.Thread(target=probe, daemon=True)  # name lookup has no timeout of its own
    t.start()
    t.join(timeout + 1.0)
    if t.is_alive():
        error.append(f"no answer within {timeout:.0f} s")
    if error:
        raise VlalignError(
            f"cannot reach the Ray cluster at {address} ({error[0]}): is it running? "
            "(start one with cluster/local/start-head.sh, or leave --address / RAY_ADDRESS "
            "unset for a local cluster)"
        )


def use_local_only_mode() -> None:
    """Keep 127.0.0.1 as this node's address (Ray's single-machine mode) in this process and in
    every process it starts. Ray reads the flag once at import, so the constant is set as well."""
    os.environ[LOCAL_ONLY_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def enable_token_auth_if_token_found() -> None:
    """Join a token-auth cluster without RAY_AUTH_MODE=token in the shell: when the mode is
    unset and a token exists (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), turn
    token mode on for this process, as `ray start` does for a head."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    from vlalign.orchestration.auth import find_token

    if find_token() is None:
        return
    try:  # Ray >= 2.52: also refreshes Ray's cached config in this process
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # older Ray has no token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def local_cpus(recipe: Recipe) -> int:
    """Logical CPUs of a local cluster: what the workers (and, placement ray, their rollout
    actors) reserve plus room for Ray Data tasks, at least 4 and at least the machine's cores."""
    r = recipe.resources
    needed = math.ceil(r.num_workers * r.cpus_per_worker) + 2
    ro = getattr(recipe.method, "rollout", None)
    if ro is not None and ro.placement == "ray":  # each training rank's rollout actors
        needed += math.ceil(r.num_workers * ro.num_workers * ro.cpus_per_worker)
    return max(4, os.cpu_count() or 1, needed)


@contextmanager
def ray_cluster(address: str | None, recipe: Recipe) -> Iterator[str]:
    """Connect to (or start) the run's cluster; yields a description; shuts down what it started."""
    import ray

    if ray.is_initialized():
        yield "the Ray cluster this process is already connected to"
        return
    target = resolve_address(address, recipe)
    if target is None:
        use_local_only_mode()
        ctx = ray.init(
            address="local",
            num_cpus=local_cpus(recipe),
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
            configure_logging=False,
        )
        where = f"a local Ray cluster ({local_cpus(recipe)} logical CPUs)"
        if ctx.dashboard_url:
            where += f", dashboard http://{ctx.dashboard_url}"
    else:
        probe_address(target)
        if is_loopback(target):
            use_local_only_mode()
        enable_token_auth_if_token_found()
        ray.init(address=target, log_to_driver=True, configure_logging=False)
        where = f"the Ray cluster at {target}"
    try:
        yield where
    finally:
        ray.shutdown()
