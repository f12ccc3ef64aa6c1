"""Ray Train scaling: step time and examples/s with 1 vs 2 workers, and the Ray path's overhead
over the single-process loop on the same config, in one run.

    python bench/train_scaling.py [--steps 300] [--json bench/results/train_scaling.json]
    python bench/train_scaling.py --mnist-wait [--steps 20] [--json bench/results/data_wait.json]

Runs von-mises (synthetic, exact estimator) and digits (real 8×8 images, hutchinson K=1)
for ``--steps`` steps each: single process (``rfdist.recipes.local.run_local``), Ray with 1 worker and
Ray with 2 workers (DDP, gloo). Step time is the worker's median per-step compute time as logged
to MLflow (rank 0); examples/s is global throughput over the whole loop (incl. data wait).

``--mnist-wait``: only the data side — real MNIST Parquet (D=784), the CPU
MNIST preset (hutchinson, batch 50), Ray with 2 workers; reports the share of each step a worker
waits for data, ``data_wait_s / (data_wait_s + step_s)`` (medians over the steps after 5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", default=None)
    parser.add_argument("--mnist-wait", action="store_true", help="only the MNIST data-wait case")
    args = parser.parse_args()
    if args.mnist_wait:
        mnist_wait(args.steps, args.json)
        return

    import mlflow
    import ray

    from rfdist.config import load_config
    from rfdist.recipes.local import run_local
    from rfdist.recipes.train import run_training

    tmp = Path(tempfile.mkdtemp(prefix="rfdist-scaling-"))
    from typer.testing import CliRunner

    from rfdist.cli.main import app

    CliRunner().invoke(app, ["data", "make", "digits", "--out", str(tmp / "digits")])
    CliRunner().invoke(app, ["data", "make", "von-mises", "--out", str(tmp / "vm"), "--rows", "20000"])
    cases = {
        "von-mises": ("von-mises.yaml", [f"data.path={tmp / 'vm'}", "data.synthetic=null"]),
        "digits": ("digits.yaml", [f"data.path={tmp / 'digits'}"]),
    }
    records = []
    for name, (preset, extra) in cases.items():
        common = [
            *extra,
            f"train.max_steps={args.steps}",
            f"train.checkpoint_every={args.steps}",
            "train.log_every=1",
            f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            f"storage.path={tmp / 'runs'}",
            "registry.name=null",
        ]
        cfg = load_config(ROOT / "rfdist" / "presets" / preset, common)
        start = time.perf_counter()
        _, metrics = run_local(cfg, progress=False)
        records.append(
            {
                "dataset": name,
                "mode": "single-process",
                "workers": 1,
                "step_s": metrics["step_s"],
                "examples_per_s": metrics["examples_per_s"],
                "wall_s": time.perf_counter() - start,
            }
        )
        for workers in (1, 2):
            cfg = load_config(
                ROOT / "rfdist" / "presets" / preset,
                [*common, f"scaling.num_workers={workers}", f"name={name}-w{workers}"],
            )
            start = time.perf_counter()
            result = run_training(cfg)
            wall = time.perf_counter() - start
            ray.shutdown()
            client = mlflow.MlflowClient(result.tracking_uri)
            steps = [m.value for m in client.get_metric_history(result.run_id, "perf/step_s")]
            throughput = [m.value for m in client.get_metric_history(result.run_id, "perf/examples_per_s")]
            waits = [m.value for m in client.get_metric_history(result.run_id, "data/wait_s")]
            records.append(
                {
                    "dataset": name,
                    "mode": "ray",
                    "workers": workers,
                    "step_s": statistics.median(steps[5:]),
                    "examples_per_s": throughput[-1],
                    "data_wait_s": statistics.median(waits[5:]),
                    "wall_s": wall,
                }
            )
    base = {r["dataset"]: r for r in records if r["mode"] == "single-process"}
    for r in records:
        r["step_ratio_vs_single"] = r["step_s"] / base[r["dataset"]]["step_s"]
    print(
        f"{'dataset':<10} {'mode':<15} {'workers':>7} {'step ms':>8} {'ex/s':>9} {'wait ms':>8} "
        f"{'wall s':>7} {'step/single':>11}"
    )
    for r in records:
        print(
            f"{r['dataset']:<10} {r['mode']:<15} {r['workers']:>7} {r['step_s'] * 1000:>8.1f} "
            f"{r['examples_per_s']:>9.0f} {r.get('data_wait_s', 0) * 1000:>8.1f} {r['wall_s']:>7.0f} "
            f"{r['step_ratio_vs_single']:>11.2f}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=2))


def mnist_wait(steps: int, json_path: str | None) -> None:
    """Data wait share at the MNIST shape, Ray Train with 2 workers."""
    import mlflow
    import ray
    from typer.testing import CliRunner

    from rfdist.cli.main import app
    from rfdist.config import load_config
    from rfdist.recipes.train import run_training

    tmp = Path(tempfile.mkdtemp(prefix="rfdist-wait-"))
    made = CliRunner().invoke(app, ["data", "make", "mnist", "--out", str(tmp / "mnist")])
    if made.exit_code != 0:
        raise SystemExit(f"rfdist data make mnist failed: {made.output}")
    cfg = load_config(
        ROOT / "rfdist" / "presets" / "mnist-cpu.yaml",
        [
            f"data.path={tmp / 'mnist'}",
            f"train.max_steps={steps}",
            f"train.checkpoint_every={steps}",
            f"train.eval_every={steps}",
            "train.log_every=1",
            "scaling.num_workers=2",
            f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            f"storage.path={tmp / 'runs'}",
            "registry.name=null",
            "name=mnist-wait-w2",
        ],
    )
    start = time.perf_counter()
    result = run_training(cfg)
    wall = time.perf_counter() - start
    ray.shutdown()
    client = mlflow.MlflowClient(result.tracking_uri)
    step_s = [m.value for m in client.get_metric_history(result.run_id, "perf/step_s")]
    waits = [m.value for m in client.get_metric_history(result.run_id, "data/wait_s")]
    skip = min(5, max(len(step_s) - 1, 0))
    step, wait = statistics.median(step_s[skip:]), statistics.median(waits[skip:])
    record = {
        "dataset": "mnist",
        "mode": "ray",
        "workers": 2,
        "batch": cfg.train.batch_size,
        "steps": steps,
        "step_s": step,
        "data_wait_s": wait,
        "mean_data_wait_s": statistics.fmean(waits[skip:]),
        "data_wait_share": wait / (wait + step),
        "mean_data_wait_share": statistics.fmean(waits[skip:])
        / (statistics.fmean(waits[skip:]) + statistics.fmean(step_s[skip:])),
        "wall_s": wall,
    }
    print(f"{'dataset':<8} {'workers':>7} {'step ms':>9} {'wait ms':>8} {'wait share':>10}")
    print(f"mnist    {2:>7} {step * 1000:>9.1f} {wait * 1000:>8.1f} {record['data_wait_share']:>10.2%}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps([record], indent=2))


if __name__ == "__main__":
    main()
