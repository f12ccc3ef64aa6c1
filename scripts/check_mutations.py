"""Check that the suite still catches the bugs it exists to catch (mutation testing by hand).

Each mutation is a one-line change to rfdist that a faster or "simplified" test suite could
stop noticing. For each one this script copies the checkout to a temporary folder, applies the
change there (the checkout is never touched), runs the tests that must catch it, and reports
whether they failed (they must).

    .venv/bin/python scripts/check_mutations.py            # every mutation (~10 min on 2 cores)
    .venv/bin/python scripts/check_mutations.py probes     # one, by name

Prints a table and writes JSON to ``mutations.json`` in the working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "non-ddp-model",
        "rfdist/runtime/worker.py",
        "self.ddp_model = ray.train.torch.prepare_model(self.model)",
        "self.ddp_model = self.model",
        (
            "tests/test_train_ray_equivalence.py::test_two_worker_ddp_equals_one_process_on_the_concatenated_batches",
        ),
    ),
    Mutation(
        "probes",
        "rfdist/core/volume.py",
        "return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)",
        "return 1.01 * torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)",
        ("tests/test_volume.py",),
    ),
    Mutation(
        "dropped-optimizer-state",
        "rfdist/runtime/worker.py",
        "load_optimizer_state(self.optimizer, state.optimizer)",
        "pass  # optimizer state dropped",
        (
            "tests/test_train_ray_equivalence.py::test_killed_and_resumed_equals_uninterrupted_and_epochs_cover_every_row",
        ),
    ),
    Mutation(
        "rank0-rng-everywhere",
        "rfdist/runtime/worker_state.py",
        'mine = next((s for s in states if int(s["rank"]) == rank), None)',
        'mine = next((s for s in states if int(s["rank"]) == 0), None)',
        (
            "tests/test_train_ray_equivalence.py::test_killed_and_resumed_equals_uninterrupted_and_epochs_cover_every_row",
        ),
    ),
)


def _mutated_copy(mutation: Mutation, into: Path) -> None:
    """The checkout's rfdist, tests, jobs and config under ``into``, with ``mutation`` applied."""
    for part in ("rfdist", "tests", "jobs", "pyproject.toml"):
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, into / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, into / part)
    target = into / mutation.file
    text = target.read_text()
    if text.count(mutation.old) != 1:
        raise SystemExit(
            f"error: {mutation.file}: the line to mutate for {mutation.name!r} is gone: {mutation.old}"
        )
    target.write_text(text.replace(mutation.old, mutation.new))


def run(mutation: Mutation) -> dict:
    """Run the mutation's tests on a mutated copy; ``caught`` is whether they failed."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutation.name}-") as tmp:
        _mutated_copy(mutation, Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp}  # the copy's rfdist, ahead of the editable install
        command = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-q", "-x", "-p", "no:cacheprovider",
                   *mutation.tests]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
    return {
        "mutation": mutation.name,
        "caught": done.returncode == 1,
        "pytest_exit": done.returncode,
        "seconds": round(seconds, 1),
        "tail": (done.stdout + done.stderr).strip().splitlines()[-1:],
    }


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    results = [run(m) for m in chosen]
    print(f"{'mutation':<26} {'caught':<7} {'exit':<5} seconds")
    for r in results:
        print(f"{r['mutation']:<26} {r['caught']!s:<7} {r['pytest_exit']:<5} {r['seconds']}")
    Path("mutations.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["caught"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
