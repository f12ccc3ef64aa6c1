"""The GPU kit's driver: run every check with a time limit, write ``gpu_check.json`` and a log tail.

    python bench/gpu_check.py [--dry-run] [--out DIR]      (normally via bench/gpu_check.sh)

Each check runs in its own process (a hang or a CUDA error cannot take the others down) under a
``timeout`` and a global budget, with ``import ray`` / ``import mlflow`` blocked in every Python
process it starts (a ``sitecustomize`` on PYTHONPATH). The JSON is rewritten after every check,
so a run cut short still reports what it measured. ``--dry-run``: the same checks on CPU with
tiny sizes (CUDA-only parts are listed as skipped, with the reason).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS = Path(os.environ.get("RFDIST_KIT_WHEELS", ROOT / "bench" / "wheels"))
KIT_DATA = Path(os.environ.get("RFDIST_KIT_DATA", ROOT / "bench" / "kit_data" / "mnist"))
NEEDED = ("zuko", "pydantic", "yaml")  # importable names the kit needs beyond the GPU machine's set

SITECUSTOMIZE = '''"""GPU kit: make ``import ray`` / ``import mlflow`` fail in every process, as on the GPU machine."""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys


class _KitBlocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow"):
            raise ImportError(name + " is blocked by the GPU kit (absent on the GPU machine)")
        return None


sys.meta_path.insert(0, _KitBlocker())

# run the sitecustomize this file shadows, if the interpreter has one
_here = os.path.dirname(os.path.abspath(__file__))
_rest = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
'''

# name: (GPU timeout s, dry-run timeout s)
TIMEOUTS = {
    "wheels": (30, 30),
    "env": (60, 90),
    "pytest-volume": (150, 150),
    "sync-debug": (60, 60),
    "data": (60, 60),
    "train": (150, 150),
    "ddp": (130, 120),
    "bench-estimators": (160, 240),  # dry run: 150 s ran out on a loaded 2-core machine
    "bench-image64": (100, 10),
}


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, from /proc (empty where there is none)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _wait_group_gone(pgid: int, seconds: float = 10.0) -> None:
    """SIGKILL is delivered asynchronously: wait (bounded) until no member of the group is left,
    so a killed check's grandchildren (torchrun's workers) no longer hold the GPU for the next."""
    deadline = time.monotonic() + seconds
    while _group_members(pgid) and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.05)


class Kit:
    """Runs the checks and keeps the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = args.dry_run
        self.device = "cpu" if self.dry else "cuda"
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="rfdist-gpu-kit-"))
        self.python = sys.executable
        self.deadline = time.monotonic() + args.budget
        self.checks: list[dict[str, Any]] = []
        self.current: subprocess.Popen | None = None
        self.logs: list[tuple[str, Path]] = []
        self.started = dt.datetime.now(dt.UTC)
        block = self.work / "kitpath"
        block.mkdir()
        (block / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.pythonpath = [str(block), str(ROOT)]
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1" if self.dry else "4"),
            "RFDIST_GPU_KIT": "1",
        }
        self._set_pythonpath()

    def _set_pythonpath(self) -> None:
        extra = os.environ.get("PYTHONPATH")
        self.env["PYTHONPATH"] = os.pathsep.join(self.pythonpath + ([extra] if extra else []))

    def terminated(self, signum: int, frame: Any) -> None:
        """The outer cap (``timeout`` in gpu_check.sh) fired: stop the running check, keep the JSON."""
        if self.current is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.current.pid, signal.SIGKILL)
        self.checks.append(
            {
                "name": "cap",
                "passed": False,
                "seconds": 0.0,
                "error": "the whole-run cap in bench/gpu_check.sh fired; later checks did not run",
            }
        )
        self.write()
        shutil.rmtree(self.work, ignore_errors=True)
        os._exit(124)

    # ------------------------------------------------------------------ bookkeeping

    def timeout(self, name: str) -> float:
        limit = TIMEOUTS[name][1 if self.dry else 0]
        return max(0.0, min(limit, self.deadline - time.monotonic() - 5))

    def record(self, name: str, seconds: float, result: dict[str, Any]) -> None:
        entry: dict[str, Any] = {"name": name, "passed": result.get("passed"), "seconds": round(seconds, 2)}
        if "skipped" in result:
            entry["passed"] = None
            entry["skipped"] = result["skipped"]
        for key in ("figures", "note", "error", "rc"):
            if key in result:
                entry[key] = result[key]
        self.checks.append(entry)
        status = "SKIP" if entry["passed"] is None else ("PASS" if entry["passed"] else "FAIL")
        detail = entry.get("skipped") or entry.get("error") or ""
        print(f"[gpu-kit] {status:4} {name:<14} {seconds:7.1f} s  {detail}"[:200], flush=True)
        self.write()

    def write(self) -> None:
        done = [c for c in self.checks if c["passed"] is not None]
        report = {
            "kit": "rfdist bench/gpu_check.sh",
            "dry_run": self.dry,
            "device": self.device,
            "started_utc": self.started.isoformat(timespec="seconds"),
            "total_seconds": round((dt.datetime.now(dt.UTC) - self.started).total_seconds(), 1),
            "passed": bool(done) and all(c["passed"] for c in done),
            "checks": self.checks,
        }
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(report, indent=2, default=str))
        os.replace(tmp, self.out / "gpu_check.json")
        lines: list[str] = []
        for name, path in self.logs:
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            lines += [f"===== {name} (last {min(len(text), 40)} of {len(text)} lines) =====", *text[-40:]]
        (self.out / "gpu_check.log").write_text("\n".join(lines) + "\n")

    def run(self, name: str, cmd: list[str], *, timeout: float | None = None) -> tuple[int, str, float]:
        """Run ``cmd`` in its own process group; kill the whole group at the time limit."""
        limit = self.timeout(name) if timeout is None else timeout
        log = self.work / f"{name}.log"
        self.logs.append((name, log))
        start = time.perf_counter()
        if limit <= 1:
            return 125, "", 0.0  # the budget is spent: not started
        with open(log, "a") as handle:
            handle.write("$ " + " ".join(cmd) + "\n")
            handle.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=handle,
                text=True,
                start_new_session=True,
            )
            self.current = proc
            try:
                stdout, _ = proc.communicate(timeout=limit)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, _ = proc.communicate()
                _wait_group_gone(proc.pid)
                rc = 124
                handle.write(f"\n[gpu-kit] killed after {limit:.0f} s\n")
            finally:
                self.current = None
            handle.write(stdout)
        return rc, stdout, time.perf_counter() - start

    def step(self, name: str, cmd: list[str]) -> dict[str, Any]:
        """Run a ``gpu_steps.py``-style command whose last stdout line is the result JSON."""
        rc, stdout, seconds = self.run(name, cmd)
        result = _last_json(stdout)
        if result is None:
            result = {"passed": False, "error": _why(rc, self.work / f"{name}.log")}
        if rc not in (0, 1):
            result.setdefault("rc", rc)
        self.record(name, seconds, result)
        return result

    def steps_cmd(self, step: str, *extra: str) -> list[str]:
        cmd = [self.python, str(ROOT / "bench" / "gpu_steps.py"), step, "--device", self.device]
        return cmd + (["--tiny"] if self.dry else []) + list(extra)

    # ------------------------------------------------------------------ checks

    def check_wheels(self) -> None:
        """Use the carried wheels (bench/wheels) when zuko/pydantic/yaml are not importable."""
        start = time.perf_counter()
        probe = subprocess.run(
            [self.python, "-c", f"import {', '.join(NEEDED)}"],
            env=self.env,
            capture_output=True,
            check=False,
            timeout=self.timeout("wheels"),
        )
        wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
        figures: dict[str, Any] = {
            "wheels": [w.name for w in wheels],
            "already_importable": probe.returncode == 0,
        }
        if wheels:  # always unpacked, so the dry run exercises the same code path
            site = self.work / "site"
            for wheel in wheels:  # a wheel is a zip of its install tree: unpacking = --no-deps install
                with zipfile.ZipFile(wheel) as archive:
                    archive.extractall(site)
            figures["site"] = str(site)
            if probe.returncode != 0:
                self.pythonpath.append(str(site))
                self._set_pythonpath()
        if probe.returncode == 0:
            result = {"passed": True, "figures": figures}
        elif not wheels:
            result = {
                "passed": False,
                "figures": figures,
                "error": "zuko/pydantic/yaml missing and no bench/wheels: run `bash bench/gpu_kit_prepare.sh` "
                "where a registry is reachable and carry bench/wheels",
            }
        else:
            again = subprocess.run(
                [self.python, "-c", f"import {', '.join(NEEDED)}"],
                env=self.env,
                capture_output=True,
                text=True,
                check=False,
                timeout=self.timeout("wheels"),
            )
            figures["installed_from_wheels"] = again.returncode == 0
            result = {"passed": again.returncode == 0, "figures": figures}
            if again.returncode != 0:
                result["error"] = (again.stderr.strip().splitlines() or ["?"])[-1][:300]
        self.record("wheels", time.perf_counter() - start, result)

    def check_pytest(self) -> None:
        junit = self.work / "junit.xml"
        selector = "cpu" if self.dry else "cuda"
        code = "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))"
        cmd = [
            self.python,
            "-c",
            code,
            "tests/test_volume.py",
            "tests/test_volume_devices.py",
            "-m",
            "gpu",
            "-k",
            selector,
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            f"--junitxml={junit}",
        ]
        rc, _, seconds = self.run("pytest-volume", cmd)
        figures = _junit(junit)
        result: dict[str, Any] = {"figures": figures, "rc": rc}
        result["passed"] = rc == 0 and figures.get("tests", 0) > 0 and not figures.get("failed_names")
        if not result["passed"]:
            result["error"] = _why(rc, self.work / "pytest-volume.log")
        result["note"] = (
            f"the gpu-marked volume tests, {selector} parametrisations, vs brute force (float64 and float32)"
        )
        self.record("pytest-volume", seconds, result)

    def check_data(self) -> Path | None:
        if (KIT_DATA / "_MANIFEST.json").is_file():
            size = sum(f.stat().st_size for f in KIT_DATA.rglob("*") if f.is_file())
            self.record(
                "data",
                0.0,
                {
                    "passed": True,
                    "figures": {"source": "carried bench/kit_data/mnist", "mb": round(size / 2**20, 2)},
                },
            )
            return KIT_DATA
        target = self.work / "mnist"
        rows = ["--train-rows", "1000", "--test-rows", "200"] if self.dry else []
        result = self.step("data", self.steps_cmd("make-data", "--out", str(target), *rows))
        return target if result.get("passed") else None

    def check_train(self, data: Path | None) -> None:
        if data is None:
            self.record("train", 0.0, {"passed": False, "error": "no MNIST Parquet (see the data check)"})
            return
        sizes = (
            ["--test-rows", "64", "--max-steps", "8", "--train-seconds", "5"]
            if self.dry
            else ["--test-rows", "1000", "--max-steps", "300", "--train-seconds", "75"]
        )
        self.step("train", self.steps_cmd("train", "--data", str(data), *sizes))

    def check_ddp(self) -> None:
        backends = ["gloo"] if self.dry else ["nccl", "gloo"]
        attempts: dict[str, Any] = {}
        start = time.perf_counter()
        result: dict[str, Any] | None = None
        for backend in backends:
            out = self.work / f"ddp-{backend}.json"
            cmd = [
                self.python,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                str(ROOT / "bench" / "gpu_steps.py"),
                "ddp-worker",
                "--device",
                self.device,
                "--backend",
                backend,
                "--result",
                str(out),
                "--ddp-steps",
                "5" if self.dry else "20",
            ]
            limit = min(45.0, self.timeout("ddp") / 2) if backend == "nccl" else self.timeout("ddp")
            rc, _, seconds = self.run("ddp", cmd, timeout=limit)
            found = json.loads(out.read_text()) if out.is_file() else None
            attempts[backend] = {
                "rc": rc,
                "seconds": round(seconds, 1),
                "passed": bool(found and found.get("passed")),
            }
            if rc != 0 and not found:
                attempts[backend]["error"] = _why(rc, self.work / "ddp.log")
            if found and found.get("passed"):
                result = found
                break
            result = found
        result = dict(result or {"passed": False, "figures": {}})
        result.setdefault("figures", {})["attempts"] = attempts
        if not self.dry:
            result["note"] = (
                "2 processes on ONE GPU: NCCL refuses two ranks on the same device (expected), so gloo "
                "with CUDA tensors is the fallback; a 2-GPU machine is needed for nccl DDP"
                if not attempts.get("nccl", {}).get("passed")
                else "nccl, 2 ranks sharing one GPU"
            )
        if not result.get("passed"):
            result.setdefault(
                "error", "; ".join(f"{b}: {a.get('error', 'failed')}" for b, a in attempts.items())
            )
        self.record("ddp", time.perf_counter() - start, result)

    def check_bench(self, shape: str) -> None:
        name = "bench-estimators" if shape == "mnist" else f"bench-{shape}"
        source = (ROOT / "bench" / "estimators.py").read_text()
        if f'"{shape}"' not in source:
            self.record(name, 0.0, {"skipped": f"bench/estimators.py has no {shape!r} shape yet"})
            return
        if self.dry and shape != "mnist":
            self.record(name, 0.0, {"skipped": f"CPU dry run: {shape} is GPU-sized (the shape exists)"})
            return
        out = self.work / f"estimators-{shape}.json"
        script = str(ROOT / "bench" / "estimators.py")
        cmd = [self.python, script, "--device", self.device, "--json", str(out)]
        if self.dry:  # the same code path at von Mises size, a few variants
            shape = "von-mises"
            cmd += ["--shapes", "von-mises", "--steps", "1", "--warmup", "0", "--draws", "1"]
            cmd += ["--variants", "two_step,exact,hutchinson-k1"]
        elif shape == "mnist":  # every variant, unchunked and chunked exact included
            cmd += [
                "--shapes",
                "mnist",
                "--image-arch",
                "paper",
                "--steps",
                "3",
                "--warmup",
                "1",
                "--draws",
                "1",
            ]
        else:
            cmd += ["--shapes", shape, *["--steps", "2", "--warmup", "1", "--draws", "1"]]
            cmd += ["--variants", "two_step,hutchinson-k1,exact-chunked"]
            if '"--image-chunks"' in source:  # one chunk size: the others cost a process each
                cmd += ["--image-chunks", "16"]
        rc, _, seconds = self.run(name, cmd)
        records = json.loads(out.read_text()) if out.is_file() else []
        if records:
            shutil.copyfile(out, self.out / f"estimators-{shape}-{self.device}.json")
        result: dict[str, Any] = {
            "passed": rc == 0 and bool(records),
            "rc": rc,
            "figures": _bench_figures(records),
        }
        if rc != 0:
            result["error"] = _why(rc, self.work / f"{name}.log")
        self.record(name, seconds, result)

    def run_all(self) -> bool:
        data: list[Path | None] = [None]
        plan = [
            ("wheels", self.check_wheels),
            ("env", lambda: self.step("env", self.steps_cmd("env"))),
            ("pytest-volume", self.check_pytest),
            ("sync-debug", lambda: self.step("sync-debug", self.steps_cmd("sync"))),
            ("data", lambda: data.__setitem__(0, self.check_data())),
            ("train", lambda: self.check_train(data[0])),
            ("ddp", self.check_ddp),
            ("bench-estimators", lambda: self.check_bench("mnist")),
            ("bench-image64", lambda: self.check_bench("image64")),
        ]
        for name, check in plan:
            try:
                check()
            except Exception as exc:  # the kit's own bug or a stuck probe: report it, go on
                self.record(
                    name, 0.0, {"passed": False, "error": f"kit error: {type(exc).__name__}: {exc}"[:300]}
                )
        self.write()
        done = [c for c in self.checks if c["passed"] is not None]
        ok = all(c["passed"] for c in done)
        print(
            f"[gpu-kit] {'all checks passed' if ok else 'some checks FAILED'}; "
            f"wrote {self.out / 'gpu_check.json'} and {self.out / 'gpu_check.log'}",
            flush=True,
        )
        shutil.rmtree(self.work, ignore_errors=True)
        return ok


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _why(rc: int, log: Path) -> str:
    if rc == 125:
        return "not run: the kit's time budget was spent by the checks before it"
    if rc in (124, 137, -9):
        return "timed out (killed by the kit's time limit)"
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    errors = [t for t in text if "Error" in t or "error" in t]
    return f"rc={rc}: " + ((errors or text or ["no output"])[-1].strip()[:300])


def _junit(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    failed = [
        f"{case.get('classname', '')}::{case.get('name', '')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {
        "tests": int(suite.get("tests", 0)),
        "failures": int(suite.get("failures", 0)),
        "errors": int(suite.get("errors", 0)),
        "skipped": int(suite.get("skipped", 0)),
        "failed_names": failed[:10],
    }


def _bench_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-variant step time, ratio to the two-step step, peak memory, matvecs; the targets."""
    rows = {}
    for r in records:
        key = f"{r['shape']}/{r['estimator']}/{r['variant']}/K{r['num_samples']}" + (
            f"/chunk{r['chunk_size']}" if r.get("chunk_size") else ""
        )
        rows[key] = {
            k: round(r[k], 4) if isinstance(r.get(k), float) else r.get(k)
            for k in ("step_s", "x_ts", "peak_mb", "matvecs", "grad_err_ours", "grad_err_ref")
            if k in r
        }
    targets: dict[str, Any] = {}
    ratio_limits = {"mnist": 6.0, "miniboone": 4.0}  # the volume-term targets (docs/perf/estimators.md)
    for r in records:
        shape = r["shape"]
        if r["estimator"] == "hutchinson" and r["variant"] == "rfdist" and r["num_samples"] == 1:
            limit = ratio_limits.get(shape)
            if limit is not None and "x_ts" in r:
                value = r["x_ts"]
                targets[f"{shape} hutchinson K=1 x two-step <= {limit}"] = [round(value, 2), value <= limit]
            if shape in ratio_limits and "matvecs" in r:
                targets[f"{shape} matvecs <= 6"] = [round(r["matvecs"], 2), r["matvecs"] <= 6]
        if shape == "mnist" and r["estimator"] == "exact" and r["variant"] == "chunked" and "peak_mb" in r:
            targets["mnist exact chunked peak <= 8 GB"] = [round(r["peak_mb"], 1), r["peak_mb"] <= 8192]
    return {"rows": rows, "targets [value, met]": targets}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (CI)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for all checks (GPU 450, dry 420)"
    )
    args = parser.parse_args()
    if args.budget is None:
        args.budget = 420.0 if args.dry_run else 450.0
    kit = Kit(args)
    signal.signal(signal.SIGTERM, kit.terminated)
    return 0 if kit.run_all() else 1


if __name__ == "__main__":
    sys.exit(main())
