"""Run every benchmark under bench/ with its CPU defaults, one after the other (`make bench`).

A benchmark is a bench/*.py script with a ``if __name__ == "__main__":`` entry point (helpers
such as flops.py or dpo_models.py have none). Known ones run first in a fixed order
(data_throughput, logprobs_memory, dpo_step, grpo_step), others alphabetically after them. Each script's
output is streamed as it runs; a summary of exit codes and times ends the run, and the exit code
is non-zero when any benchmark failed.

    .venv/bin/python bench/run_all.py                       # everything, CPU defaults
    .venv/bin/python bench/run_all.py --only dpo_step       # a subset
    .venv/bin/python bench/run_all.py --json-dir bench-out  # each script also writes NAME.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = ("data_throughput", "logprobs_memory", "dpo_step", "grpo_step")
ENTRY = 'if __name__ == "__main__":'
# Long studies run only when named with --only (alignment_seeds trains 3 seeds: 10-15 min on 2 cores).
ON_REQUEST = ("alignment_seeds",)
# Analysis tools that read a study's output, not benchmarks: never run from here.
TOOLS = ("alignment_misses",)


def discover() -> list[str]:
    """Benchmark names (file stems) in run order."""
    found = sorted(
        p.stem
        for p in BENCH.glob("*.py")
        if p.name != Path(__file__).name and p.stem not in TOOLS and ENTRY in p.read_text()
    )
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    p.add_argument("--json-dir", type=Path, help="pass --json DIR/NAME.json to each benchmark")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = p.parse_args(argv)
    names = discover()
    if args.list:
        print("\n".join(names))
        return 0
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            p.error(f"unknown benchmark(s) {unknown}; known: {', '.join(names)}")
        names = [n for n in names if n in args.only]
    else:
        names = [n for n in names if n not in ON_REQUEST]
    results = []
    for name in names:
        cmd = [sys.executable, str(BENCH / f"{name}.py")]
        if args.json_dir:
            args.json_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["--json", str(args.json_dir / f"{name}.json")]
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(cmd, check=False).returncode
        results.append((name, rc, time.perf_counter() - start))
    print("\n=== summary")
    for name, rc, secs in results:
        print(f"{name:20} {'ok' if rc == 0 else f'FAILED (exit {rc})':16} {secs:7.1f} s")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
