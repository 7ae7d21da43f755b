"""CLI: `vlalign submit` and `vlalign jobs list|logs|stop` (thin: parse, call, print)."""

from __future__ import annotations

import argparse
import sys

# Dashboard address of the cluster (jobs API); env fallbacks are resolved in jobs.resolve_address.
_ADDRESS_HELP = "Ray dashboard address, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)"


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a recipe as a Ray job and print its id; --follow streams its logs to the end."""
    from vlalign.orchestration.submit import parse_env, submit

    result = submit(
        args.recipe,
        args.address,
        args.overrides,
        follow=False,
        working_dir=args.working_dir,
        runtime_env_file=args.runtime_env,
        env=parse_env(args.env),
        pip=args.pip,
        no_ray=args.no_ray,
    )
    print(f"submitted job {result.job_id} to {result.dashboard}")
    if not args.follow:
        print(
            f"  follow it: vlalign jobs logs {result.job_id} --follow --address {result.dashboard}"
        )
        print(f"  stop it:   vlalign jobs stop {result.job_id} --address {result.dashboard}")
        return 0
    return _follow(result.job_id, args.address)


def _follow(job_id: str, address: str | None) -> int:
    from vlalign.orchestration import jobs

    client = jobs.connect(address)
    try:
        status = jobs.follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running", file=sys.stderr)
        return 130
    _, message = jobs.job_status(client, job_id)
    print(f"job {job_id} {status}" + (f": {message}" if status != "SUCCEEDED" and message else ""))
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs_list(args: argparse.Namespace) -> int:
    """List the cluster's submitted jobs."""
    from vlalign.orchestration.jobs import list_jobs

    rows = list_jobs(args.address)
    if not rows:
        print("no jobs")
        return 0
    width = max(len(r.job_id) for r in rows)
    print(f"{'JOB':<{width}}  {'STATUS':<9}  {'STARTED (UTC)':<19}  ENTRYPOINT")
    for r in rows:
        print(f"{r.job_id:<{width}}  {r.status:<9}  {r.start:<19}  {r.entrypoint}")
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    """Print a job's logs (--follow: until it ends; exit 0 only if it succeeded)."""
    from vlalign.orchestration.jobs import job_logs

    if args.follow:
        return _follow(args.job_id, args.address)
    sys.stdout.write(job_logs(args.address, args.job_id))
    return 0


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    """Ask a job to stop."""
    from vlalign.orchestration.jobs import stop_job

    was_running = stop_job(args.address, args.job_id)
    print(f"stop requested for {args.job_id}" if was_running else f"{args.job_id} was not running")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `submit` and `jobs` to the vlalign command."""
    p = subparsers.add_parser("submit", help="run a recipe as a Ray job on a running cluster")
    p.add_argument("recipe", help="recipe file or shipped name")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. train.lr=3e-5"
    )
    p.add_argument("--address", help=_ADDRESS_HELP)
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument(
        "--working-dir",
        help="upload this folder as the job's working dir (the recipe must be inside it); "
        "default: only the resolved recipe is uploaded",
    )
    p.add_argument(
        "--runtime-env", metavar="FILE", help="runtime env YAML, e.g. cluster/runtime_env.yaml"
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the job (repeatable)",
    )
    p.add_argument(
        "--pip", action="append", default=[], metavar="PKG", help="extra pip package (repeatable)"
    )
    p.add_argument(
        "--no-ray",
        action="store_true",
        help="run the recipe inside the job's own process instead of a TorchTrainer",
    )
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser("jobs", help="list, read or stop Ray jobs of a cluster")
    jobs_sub = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    q = jobs_sub.add_parser("list", help="list submitted jobs")
    q.add_argument("--address", help=_ADDRESS_HELP)
    q.set_defaults(func=cmd_jobs_list)
    q = jobs_sub.add_parser("logs", help="print a job's logs")
    q.add_argument("job_id", metavar="ID")
    q.add_argument("--follow", action="store_true", help="stream until the job ends")
    q.add_argument("--address", help=_ADDRESS_HELP)
    q.set_defaults(func=cmd_jobs_logs)
    q = jobs_sub.add_parser("stop", help="stop a job")
    q.add_argument("job_id", metavar="ID")
    q.add_argument("--address", help=_ADDRESS_HELP)
    q.set_defaults(func=cmd_jobs_stop)
