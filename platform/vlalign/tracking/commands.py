"""CLI: `vlalign registry list|promote|rollback` and `vlalign ui` (thin: parse, call, print)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from vlalign.errors import VlalignError

# The scorecard metrics `registry list` shows (labels from vlalign.scorecard.METRICS).
LIST_METRICS = (
    "harmful_refusal_rate",
    "benign_refusal_rate",
    "attack_success_rate",
    "text_validity_rate",
)


def _store(args: argparse.Namespace):
    from vlalign.tracking.store import resolve_store

    uri = args.tracking_uri
    if uri is None and getattr(args, "recipe", None):
        from vlalign.config import load_recipe

        uri = load_recipe(args.recipe).tracking.uri
    return resolve_store(uri)


def _add_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store: sqlite:///PATH, http://HOST:PORT "
        "(default: MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)",
    )


def cmd_list(args: argparse.Namespace) -> int:
    """Versions of a registered model with aliases, promotion state and scorecard metrics."""
    from rich.console import Console
    from rich.table import Table

    from vlalign.tracking.promotion import HISTORY_TAG
    from vlalign.tracking.registry import list_versions, model_tag_json

    store = _store(args)
    versions = list_versions(store, args.name)
    table = Table(title=f"{args.name}  ({store.uri})")
    for col in ("version", "aliases", "created", "method", "promotion"):
        table.add_column(col, no_wrap=True)
    from vlalign.scorecard import METRICS

    for k in LIST_METRICS:
        table.add_column(METRICS[k].label, justify="right", no_wrap=True)
    for v in versions:
        table.add_row(
            v.version,
            ", ".join(v.aliases) or "-",
            v.created.strftime("%Y-%m-%d %H:%M"),
            v.tags.get("method", "-"),
            v.promotion,
            *(f"{v.metrics[k]:.3f}" if k in v.metrics else "-" for k in LIST_METRICS),
        )
    console = Console()
    if not console.is_terminal:  # piped: one line per version, never wrapped at 80 columns
        console = Console(width=200)
    console.print(table)
    history = model_tag_json(store, args.name, HISTORY_TAG, [])
    print(f"previous champions (oldest first): {', '.join(map(str, history)) or '-'}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Promote a version to `champion` if its scorecard passes the gates; exit 1 when refused."""
    from vlalign.tracking.promotion import PromotionRefused, promote
    from vlalign.tracking.vs_champion import summary_lines

    cfg = None
    if args.recipe:
        from vlalign.config import load_recipe

        cfg = load_recipe(args.recipe).promotion
    store = _store(args)
    try:
        res = promote(store, args.name, args.version, cfg)
    except PromotionRefused as e:
        print(e.report.summary(), file=sys.stderr)
        if e.vs_champion is not None:
            print("\n".join(summary_lines(e.vs_champion)), file=sys.stderr)
        print(f"refused: {args.name} version {args.version}; champion unchanged", file=sys.stderr)
        return 1
    print(res.report.summary())
    if res.vs_champion is not None:
        print("\n".join(summary_lines(res.vs_champion)))
    was = f" (previous champion: version {res.previous})" if res.previous else ""
    print(f"promoted: {args.name} version {res.version} is now champion{was}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Restore the previous champion."""
    from vlalign.tracking.promotion import rollback

    restored, demoted = rollback(_store(args), args.name)
    print(f"rolled back: {args.name} champion is version {restored} (was {demoted or '-'})")
    return 0


def ui_command(store, port: int) -> list[str]:
    """The `mlflow server` command line serving the UI for `store` on 127.0.0.1:port."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.uri]
    if store.artifact_root:
        cmd += ["--default-artifact-root", store.artifact_root]
    return [*cmd, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def _check_port_free(port: int) -> None:
    """VlalignError naming the port when 127.0.0.1:port cannot be bound (in use, privileged)."""
    import socket

    if not 0 < port < 65536:
        raise VlalignError(f"--port {port}: not a TCP port (1-65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise VlalignError(
                f"--port {port}: cannot listen on 127.0.0.1:{port} ({e.strerror}): "
                "pick another port with --port"
            ) from None


def cmd_ui(args: argparse.Namespace) -> int:
    """Run the MLflow UI on 127.0.0.1 for the configured store (Ctrl-C stops it)."""
    from vlalign.tracking.store import prepare_store

    store = _store(args)
    if store.is_server:
        raise VlalignError(f"{store.uri} is already a tracking server: open it in a browser")
    _check_port_free(args.port)
    prepare_store(store)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow UI for {store.uri}: http://127.0.0.1:{args.port}  (Ctrl-C stops it)", flush=True)
    proc = subprocess.Popen(ui_command(store, args.port), env=env)

    stopping: list[bool] = []

    def _stop(signum, frame) -> None:  # SIGTERM: stop the server too, do not orphan it
        stopping.append(True)
        proc.terminate()

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        code = proc.wait()
        if code != 0 and not stopping:
            raise VlalignError(f"the MLflow UI server exited with code {code} (see above)")
        return code
    except KeyboardInterrupt:  # Ctrl-C reaches the server as well; wait for it to exit
        proc.wait(timeout=30)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(subparsers) -> None:
    """Add `registry` and `ui` to the vlalign command tree."""
    reg = subparsers.add_parser("registry", help="model registry: list, promote, rollback")
    rsub = reg.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    p = rsub.add_parser("list", help="versions, aliases and scorecards of a registered model")
    p.add_argument("name", help="registered model name")
    _add_uri(p)
    p.set_defaults(func=cmd_list)

    p = rsub.add_parser("promote", help="move `champion` to a version that passes the gates")
    p.add_argument("name", help="registered model name")
    p.add_argument("--version", required=True, help="version to promote")
    p.add_argument(
        "--recipe",
        default=None,
        help="recipe whose promotion section holds the gates (default: the version's run recipe)",
    )
    _add_uri(p)
    p.set_defaults(func=cmd_promote)

    p = rsub.add_parser("rollback", help="restore the previous champion")
    p.add_argument("name", help="registered model name")
    _add_uri(p)
    p.set_defaults(func=cmd_rollback)

    p = subparsers.add_parser("ui", help="open the MLflow UI (127.0.0.1) for the configured store")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    _add_uri(p)
    p.set_defaults(func=cmd_ui)
