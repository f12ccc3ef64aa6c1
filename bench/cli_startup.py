"""CLI start-up time: `rfdist --help`, `rfdist --version`, one Tab completion, `ray --help` beside them.

    python bench/cli_startup.py [--repeat 5] [--json bench/results/cli_startup.json]

Each command runs ``--repeat`` times as a fresh process (the first run warms the OS file cache
and is dropped); prints the median and minimum wall-clock seconds as a table and writes them,
with the machine's load average and CPU count, as JSON. On a shared machine compare the rows
with each other (and with ``ray --help``), not with another day's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMPLETION_ENV = {"_RFDIST_COMPLETE": "complete_bash", "COMP_WORDS": "rfdist tr", "COMP_CWORD": "1"}


def _commands() -> dict[str, tuple[list[str], dict[str, str]]]:
    cli = [sys.executable, "-m", "rfdist.cli"]
    commands = {
        "rfdist --help": ([*cli, "--help"], {}),
        "rfdist --version": ([*cli, "--version"], {}),
        "rfdist train --help": ([*cli, "train", "--help"], {}),
        "completion (rfdist tr<Tab>)": (cli, COMPLETION_ENV),
        "python -c pass": ([sys.executable, "-c", "pass"], {}),
    }
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    if ray:
        commands["ray --help"] = ([ray, "--help"], {})
    return commands


def _time(argv: list[str], env: dict[str, str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat + 1):
        tick = time.perf_counter()
        subprocess.run(argv, env={**os.environ, **env}, capture_output=True, check=False)
        times.append(time.perf_counter() - tick)
    return times[1:]  # the first run fills the file cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    for name, (argv, env) in _commands().items():
        times = _time(argv, env, args.repeat)
        rows.append({"command": name, "median_s": statistics.median(times), "min_s": min(times)})
    width = max(len(r["command"]) for r in rows)
    print(f"{'command':<{width}}  median s  min s")
    for r in rows:
        print(f"{r['command']:<{width}}  {r['median_s']:8.3f}  {r['min_s']:5.3f}")
    report = {
        "machine": {"cpus": os.cpu_count(), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
                    "python": platform.python_version(), "platform": platform.platform()},
        "repeat": args.repeat,
        "rows": rows,
    }  # fmt: skip
    print(json.dumps(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
