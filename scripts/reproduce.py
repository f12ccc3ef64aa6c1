"""Reproduce the paper's experiments: train every variant × seed, evaluate, write a results page.

    python scripts/reproduce.py jobs/configs/paper/cpu.yaml                 # all CPU presets
    python scripts/reproduce.py jobs/configs/paper/cpu.yaml --only von-mises
    python scripts/reproduce.py jobs/configs/paper/gpu.yaml --ray           # full presets on Ray Train

Each run trains in this process (``--ray``: on Ray Train via ``rfdist.recipes.train.run_training``), is
logged to MLflow as a run with the model, then evaluated by ``rfdist.recipes.evaluate.run_eval`` (a new
evaluation run linked to the training run). Every finished run appends one JSON line to
``--runs`` (so an interrupted reproduction keeps what it did and ``--report-only`` rebuilds the
page); the page (``--out``, default ``docs/results.md``) has one table per experiment with
mean ± standard deviation (ddof = 1) over seeds, the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rfdist.config import RunConfig, load_config  # noqa: E402
from rfdist.core.builders import build_model  # noqa: E402
from rfdist.core.engine import fit  # noqa: E402
from rfdist.recipes.evaluate import EvalOptions, run_eval  # noqa: E402
from rfdist.recipes.local import load_arrays  # noqa: E402
from rfdist.tracking.models import log_flow_model, resolve_tracking_uri  # noqa: E402

EXPERIMENT = "rfdist-paper"
# Where the page's canonical commands put their outputs (relative: runs/ is gitignored).
TRACKING_URI = "sqlite:///runs/paper/mlflow.db"
OUT_DIR = "runs/paper"
_ABSOLUTE = re.compile(r"(?<![\w.~:/])(?:sqlite:////|/)(?:[\w.-]+/)*[\w.-]+")


def portable(text: str, roots: list[Path]) -> str:
    """``text`` with absolute paths under one of ``roots`` rewritten relative to it.

    ``sqlite:////ROOT/runs/x.db`` becomes ``sqlite:///runs/x.db`` (a relative sqlite URI), and
    ``/ROOT/docs/x.md`` becomes ``docs/x.md``; other text is left as it is.
    """

    def relative(match: re.Match) -> str:
        token = match.group(0)
        prefix, path = (
            ("sqlite:///", token[len("sqlite:///") :]) if token.startswith("sqlite:") else ("", token)
        )
        for root in roots:
            try:
                return prefix + Path(path).relative_to(root.resolve()).as_posix()
            except ValueError:
                continue
        return token

    return _ABSOLUTE.sub(relative, text)


def canonical_commands(plan_path: str, name: str, exp: dict, runs: list[dict]) -> list[str]:
    """One re-runnable ``reproduce.py`` command per group of runs sharing the same extra ``--set``s.

    The page shows these instead of the commands as typed (which named scratch stores and output
    files): relative paths and the preset names, run from a fresh clone's root.
    """
    groups: dict[tuple[bool, tuple[str, ...]], list[dict]] = {}
    for run in runs:
        known = {*exp.get("set", []), *exp["variants"].get(run["variant"], [])}
        extra = tuple(
            s for s in run.get("overrides", [])
            if s not in known and not s.startswith(("seed=", "name="))
        )  # fmt: skip
        ray = "--ray" in shlex.split(run.get("command", ""))
        groups.setdefault((ray, extra), []).append(run)
    commands = []
    for (ray, extra), group in groups.items():
        seeds = sorted({int(r["seed"]) for r in group})
        variants = [v for v in exp["variants"] if any(r["variant"] == v for r in group)]
        parts = ["python", "scripts/reproduce.py", plan_path, "--only", name]
        parts += ["--seeds", ",".join(map(str, seeds))]
        if len(variants) < len(exp["variants"]):
            parts += [a for v in variants for a in ("--variant", v)]
        parts += [a for s in extra for a in ("--set", s)] + (["--ray"] if ray else [])
        parts += ["--tracking-uri", TRACKING_URI, "--runs", f"{OUT_DIR}/{name}-runs.jsonl"]
        parts += ["--out", f"{OUT_DIR}/{name}.md"]
        commands.append(shlex.join(parts))
    return commands


def train_local(cfg: RunConfig) -> tuple[Any, Any, float]:
    """Train in this process (no per-step test metrics); returns (model, spec, seconds)."""
    torch.manual_seed(cfg.seed)
    data = load_arrays(cfg)
    spec = cfg.model.spec(data.data_shape, cfg.seed)
    model = build_model(spec)
    start = time.perf_counter()
    fit(
        model, data.train, steps=cfg.train.max_steps, batch_size=cfg.train.batch_size, lr=cfg.train.lr,
        options=cfg.loss_options(), grad_clip=cfg.train.grad_clip, warmup_steps=cfg.train.warmup_steps,
        max_consecutive_skips=cfg.train.max_consecutive_skips, seed=cfg.seed, progress=True,
        manifold_steps=cfg.train.manifold_steps,
    )  # fmt: skip
    return model, spec, time.perf_counter() - start


def step_timing(client: Any, run_id: str) -> dict[str, float]:
    """Rank 0's mean step time and data-wait share over a Ray Train run, from its MLflow history.

    ``perf/step_s`` and ``data/wait_s`` are means over each ``train.log_every`` window; the first
    window (pipeline start, compilation) is left out when there are others.
    """

    def history(key: str) -> list[float]:
        values = [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        return values[1:] if len(values) > 1 else values

    step, wait = history("perf/step_s"), history("data/wait_s")
    if not step:
        return {}
    out = {"step_seconds": float(np.mean(step))}
    if wait:
        out["data_wait_fraction"] = float(np.mean(wait) / np.mean(step))
    return out


def train_and_log(cfg: RunConfig, tracking_uri: str, *, use_ray: bool) -> tuple[str, float, dict[str, float]]:
    """Train ``cfg`` and log it to MLflow; returns (model URI, training seconds, step timing)."""
    import mlflow

    if use_ray:
        from rfdist.recipes.train import run_training

        cfg.tracking.uri = tracking_uri
        start = time.perf_counter()
        result = run_training(cfg)
        seconds = time.perf_counter() - start
        client = mlflow.MlflowClient(tracking_uri)
        if result.already_finished:  # trained before (e.g. its evaluation failed): that run's wall time
            info = client.get_run(result.run_id).info
            seconds = (info.end_time - info.start_time) / 1000 if info.end_time else float("nan")
        timing = step_timing(client, result.run_id)
        if result.model_version:  # registered: the URI anyone can re-evaluate
            return f"models:/{cfg.registry.name}/{result.model_version}", seconds, timing
        return f"runs:/{result.run_id}/{cfg.registry.name}", seconds, timing  # the logged model's name
    model, spec, seconds = train_local(cfg)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=cfg.name) as run:
        params = {k: str(v)[:500] for k, v in cfg.flat().items()}
        for i in range(0, len(params), 100):
            mlflow.log_params(dict(list(params.items())[i : i + 100]))
        mlflow.log_metric("train_seconds", seconds)
        log_flow_model(model, spec)
    return f"runs:/{run.info.run_id}/model", seconds, {"step_seconds": seconds / max(cfg.train.max_steps, 1)}


def machine() -> str:
    """This machine in one line (OS, cores, Python, torch, GPU), recorded with each run."""
    return (
        f"{platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}{' + CUDA' if torch.cuda.is_available() else ', no GPU'}"
    )


def fmt(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {float(np.std(values, ddof=1)):.2g}"


def welch(a: list[float], b: list[float], *, level: float = 0.95) -> dict[str, float]:
    """Mean difference ``mean(a) - mean(b)``, its Welch confidence interval and two-sided p-value.

    Welch's t-test (unequal variances, Welch–Satterthwaite degrees of freedom), as
    ``scipy.stats.ttest_ind(a, b, equal_var=False)``; with fewer than two values on a side, or no
    spread at all, the interval and p-value are NaN.
    """
    from scipy import stats

    a = [v for v in a if v is not None and math.isfinite(v)]
    b = [v for v in b if v is not None and math.isfinite(v)]
    diff = float(np.mean(a) - np.mean(b)) if a and b else float("nan")
    out = {"diff": diff, "low": float("nan"), "high": float("nan"), "p": float("nan"), "n_a": len(a), "n_b": len(b)}
    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return out
    test = stats.ttest_ind(a, b, equal_var=False)
    interval = test.confidence_interval(level)
    out.update(low=float(interval.low), high=float(interval.high), p=float(test.pvalue))
    return out


def comparison_lines(exp: dict, runs: dict[str, list[dict]]) -> list[str]:
    """The plan's ``compare`` pairs as a table: each difference the text claims, with its interval.

    ``compare: {metrics: [...], pairs: [[A, B], ...]}``; a pair is left out where a side has no runs.
    """
    spec = exp.get("compare")
    if not spec:
        return []
    lines = [
        "Differences (A − B: mean over seeds; 95 % Welch interval and two-sided p-value, unequal",
        "variances; an interval that excludes 0 is a difference at that level):",
        "",
        "| A | B | metric | A − B | 95 % interval | p | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for a, b in spec["pairs"]:
        if not runs.get(a) or not runs.get(b):
            continue
        for metric in spec["metrics"]:
            got = welch([r["metrics"].get(metric) for r in runs[a]], [r["metrics"].get(metric) for r in runs[b]])
            interval = f"[{got['low']:.3g}, {got['high']:.3g}]" if math.isfinite(got["low"]) else "–"
            p = f"{got['p']:.2g}" if math.isfinite(got["p"]) else "–"
            lines.append(f"| {a} | {b} | {metric} | {got['diff']:.3g} | {interval} | {p} | {got['n_a']}, {got['n_b']} |")
    return [*lines, ""]


# EvalOptions fields that are `rfdist eval` flags (plots, progress: no effect on the numbers).
_EVAL_FLAGS = ("ood_data", "features", "max_rows", "ood_train_rows", "fd_samples", "preprocess", "batch_size")


def eval_command(exp: dict, run: dict) -> str:
    """The ``rfdist eval`` command that re-scores ``run``'s model as this script did.

    Same options as the plan's ``eval`` section and the run's seed (the evaluation is seeded, so
    it gives the table's numbers), against the page's store (``TRACKING_URI``).
    """
    opts = EvalOptions(**{**exp.get("eval", {}), "seed": int(run["seed"])})
    defaults = EvalOptions(data=opts.data)
    parts = ["rfdist", "eval", run["model_uri"], "--data", opts.data]
    for name in _EVAL_FLAGS:
        value = getattr(opts, name)
        if value is not None and value != getattr(defaults, name):
            parts += [f"--{name.replace('_', '-')}", str(value)]
    parts += ["--seed", str(opts.seed), "--tracking-uri", TRACKING_URI]
    return shlex.join(parts)


def report(
    plan: dict, rows: list[dict], out: Path, command: str, *, plan_path: str = "jobs/configs/paper/cpu.yaml"
) -> str:
    """The results page (Markdown) from the per-run records.

    Commands on the page carry no absolute paths: runs made by this script are shown as
    :func:`canonical_commands`; other recorded commands (hand-made runs) go through
    :func:`portable`.
    """
    roots = [ROOT, Path.cwd()]
    command = portable(command, roots)
    lines = [
        "# Reproduction results",
        "",
        f"Page written on {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} by `{command}`;",
        "each section lists the commands that re-run its experiment, and the date and machine of its runs.",
        "",
        "Cells are mean ± standard deviation (ddof = 1) over the seeds listed; log-likelihoods in nats per",
        "example (`_data`: data space; `_logit`: the logit space images are modelled in), `kl` by quadrature",
        "over the true circle or sphere, `fd_*` Fréchet distance of Gaussian fits of samples vs test rows.",
        "",
    ]
    pending: list[str] = []
    for name, exp in plan["experiments"].items():
        got = [r for r in rows if r["experiment"] == name]
        if not got:
            pending.append(name)
            continue
        columns = exp.get("report", ["test_nll_data"])
        lines += [f"## {name}", "", exp.get("description", "").strip(), ""]
        lines.append("| variant | seeds | " + " | ".join(columns) + " |")
        lines.append("|---" * (len(columns) + 2) + "|")
        by_variant: dict[str, list[dict]] = {}
        for variant in exp["variants"]:
            runs = sorted((r for r in got if r["variant"] == variant), key=lambda r: int(r["seed"]))
            if not runs:
                continue
            by_variant[variant] = runs
            seeds = ",".join(str(r["seed"]) for r in runs)
            cells = [fmt([r["metrics"].get(c) for r in runs]) for c in columns]
            lines.append(f"| {variant} | {seeds} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += comparison_lines(exp, by_variant)
        ours = [r for r in got if r.get("command", command).startswith("python scripts/reproduce.py")]
        commands = canonical_commands(plan_path, name, exp, ours)
        commands += sorted({portable(r["command"], roots) for r in got if r not in ours})
        dates = sorted({r["date"] for r in got if r.get("date")})
        machines = sorted({r["machine"] for r in got if r.get("machine")})
        when = f" Measured on {', '.join(dates)}" if dates else ""
        when += f" ({'; '.join(machines)})." if machines else "." if dates else ""
        lines += [f"Commands (from the repository root; outputs under `{OUT_DIR}/`).{when}", ""]
        lines += [*[f"    {c}" for c in commands], ""]
        registered = [r for r in got if str(r.get("model_uri", "")).startswith("models:/")]
        order = {variant: i for i, variant in enumerate(exp["variants"])}
        if registered:
            lines += [
                "Re-evaluate the registered models (in that store; the evaluation is seeded, so each gives",
                "its row's numbers; `--json FILE` writes them to a file):",
                "",
                *[f"    {eval_command(exp, r)}" for r in sorted(registered, key=lambda r: (order.get(r["variant"], 0), int(r["seed"])))],
                "",
            ]
        if exp.get("notes"):
            lines += [exp["notes"].strip(), ""]
    if pending:
        lines += [
            "## Not run yet",
            "",
            "Planned in the same plan file; each runs with the command below (image experiments first",
            "need `rfdist data make fashion-mnist --out data/fashion-mnist` and",
            "`rfdist data make mnist --out data/mnist`):",
            "",
        ]
        for name in pending:
            parts = ["python", "scripts/reproduce.py", plan_path, "--only", name]
            parts += ["--ray"] if plan["experiments"][name].get("ray") else []
            parts += ["--tracking-uri", TRACKING_URI, "--runs", f"{OUT_DIR}/{name}-runs.jsonl"]
            parts += ["--out", f"{OUT_DIR}/{name}.md"]
            lines += [f"- `{name}`: `{shlex.join(parts)}`"]
        lines.append("")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("plan", type=Path, help="jobs/configs/paper/cpu.yaml or gpu.yaml")
    parser.add_argument("--only", action="append", help="run only these experiments (repeatable)")
    parser.add_argument("--variant", action="append", help="run only these variants (repeatable)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the plan's)")
    parser.add_argument(
        "--set", action="append", default=[], help="extra override for every run (smoke tests)"
    )
    parser.add_argument("--ray", action="store_true", help="train on Ray Train instead of in-process")
    parser.add_argument("--tracking-uri", help="MLflow store (default: env, else ./mlflow.db)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--runs", type=Path, default=None, help="JSON-lines record (default: beside --out)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the page from --runs")
    args = parser.parse_args(argv)
    plan = yaml.safe_load(args.plan.read_text())
    runs_path = args.runs or args.out.with_name(args.plan.stem + "-runs.jsonl")
    command = portable(
        "python scripts/reproduce.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        [ROOT, Path.cwd()],
    )
    plan_path = portable(str(args.plan.resolve()), [ROOT])
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    torch.set_num_threads(int(plan.get("threads", torch.get_num_threads())))
    if not args.report_only:
        for name, exp in plan["experiments"].items():
            if args.only and name not in args.only:
                continue
            seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else exp.get("seeds", plan["seeds"])
            for variant, overrides in exp["variants"].items():
                if args.variant and variant not in args.variant:
                    continue
                for seed in seeds:
                    sets = [
                        *exp.get("set", []),
                        *overrides,
                        *args.set,
                        f"seed={seed}",
                        f"name={name}-{variant}-s{seed}",
                    ]
                    cfg = load_config(ROOT / exp["config"], sets)
                    print(f"== {name} / {variant} / seed {seed}", flush=True)
                    use_ray = args.ray or bool(exp.get("ray", False))  # the plan may ask for Ray Train
                    model_uri, seconds, timing = train_and_log(cfg, tracking_uri, use_ray=use_ray)
                    opts = EvalOptions(**{**exp.get("eval", {}), "seed": seed})
                    result, eval_run = run_eval(model_uri, opts, tracking_uri=tracking_uri)
                    metrics = {**result.metrics, "train_seconds": seconds, **timing}
                    record = {"experiment": name, "variant": variant, "seed": seed, "model_uri": model_uri,
                              "eval_run_id": eval_run, "overrides": sets, "command": command,
                              "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"), "machine": machine(),
                              "metrics": metrics}  # fmt: skip
                    with runs_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}), flush=True)
    rows, seen = [], set()
    for line in runs_path.read_text().splitlines() if runs_path.exists() else []:
        record = json.loads(line) if line.strip() else None
        key = record and (record["experiment"], record["variant"], record["seed"])
        if record and key not in seen:  # the first record of a run wins; re-runs append duplicates
            seen.add(key)
            rows.append(record)
    print(report(plan, rows, args.out, command, plan_path=plan_path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
