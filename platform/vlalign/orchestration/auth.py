"""Ray token authentication for the job REST API.

Ray (>= 2.52) turns token authentication on by default: `ray start` and a local `ray.init()`
write a token to ~/.ray/auth_token, and the dashboard then answers 401 without an
`Authorization: Bearer <token>` header. Ray's own client only adds that header when
RAY_AUTH_MODE=token is set in the client's environment; vlalign looks for the token itself, in
Ray's order, so that `vlalign submit` works whether or not the variable is set.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlalign.errors import VlalignError

DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"


def find_token() -> tuple[str, str] | None:
    """The Ray auth token and where it came from, or None when there is none.

    Sources, first match wins: RAY_AUTH_TOKEN (the token itself), RAY_AUTH_TOKEN_PATH (a file),
    ~/.ray/auth_token.
    """
    value = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if value:
        return value, "RAY_AUTH_TOKEN"
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidates = [Path(path_env).expanduser()] if path_env else [DEFAULT_TOKEN_PATH]
    for path in candidates:
        if path.is_file():
            token = path.read_text(encoding="utf-8").strip()
            if token:
                return token, str(path)
    return None


def auth_headers() -> dict[str, str]:
    """HTTP headers for the Ray dashboard: a bearer token when one is configured.

    RAY_AUTH_MODE=disabled sends none. RAY_AUTH_MODE=token with no token found is an error that
    says where the token was looked for. Otherwise a token found is sent (a cluster without
    authentication ignores it).
    """
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        return {}
    found = find_token()
    if found is None:
        if mode == "token":
            where = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(DEFAULT_TOKEN_PATH)
            raise VlalignError(
                "RAY_AUTH_MODE=token but no Ray auth token found: set RAY_AUTH_TOKEN, or put the "
                f"cluster's token in {where} (on the head: `ray get-auth-token`)"
            )
        return {}
    return {"Authorization": f"Bearer {found[0]}"}
