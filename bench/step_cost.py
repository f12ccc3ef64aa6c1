"""What one training step of a preset costs: FLOPs, seconds here, and an estimate for a GPU.

    PYTHONPATH=. .venv/bin/python bench/step_cost.py fashion-mnist --set model.density_norm=running \\
        --timing-batch 10 --json docs/perf/step-cost-fashion-mnist-paper-cpu.json

For each variant (two-step, Hutchinson K=1, exact): the floating-point operations of one
optimizer step at the preset's batch (``torch.utils.flop_counter`` on a ``--flops-batch`` batch,
scaled linearly: convolutions and matmuls are linear in the batch), the seconds of a step on this
machine (timed at ``--timing-batch``, scaled the same way; the first step is a warm-up), and the
wall time of ``train.max_steps`` steps on a GPU that sustains ``--gpu-tflops`` (a range: an
estimate, not a measurement). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from rfdist.config import load_config
from rfdist.core.builders import build_model
from rfdist.core.engine import make_optimizer, train_step

VARIANTS = {
    "two-step": ["train.mode=two_step"],
    "hutchinson-k1": ["estimator.name=hutchinson", "estimator.num_samples=1"],
    "exact": ["estimator.name=exact"],
}


def step_flops(cfg, shape: tuple[int, ...], batch: int) -> float:
    """FLOPs of one forward + backward of the training loss at ``batch`` rows."""
    model = build_model(cfg.model.spec(shape, cfg.seed)).train()
    x = torch.rand(batch, *shape) * 4 - 2  # logit-space-like rows
    kwargs = cfg.loss_options().kwargs()
    model(x, **kwargs)  # first call: caches (e.g. the Gram preconditioner) as in training
    with FlopCounterMode(display=False) as counter:
        loss, _ = model(x, **kwargs)
        loss.backward()
    return float(counter.get_total_flops())


def step_seconds(cfg, shape: tuple[int, ...], batch: int, steps: int) -> list[float]:
    """Wall seconds of ``steps`` optimizer steps at ``batch`` rows, after one warm-up step."""
    model = build_model(cfg.model.spec(shape, cfg.seed)).train()
    optimizer = make_optimizer(model.parameters(), cfg.train.lr)
    x = torch.rand(batch, *shape) * 4 - 2
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        train_step(model, optimizer, x, cfg.loss_options())
        times.append(time.perf_counter() - start)
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("preset", help="preset name or config file (an image preset)")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--flops-batch", type=int, default=2)
    parser.add_argument("--timing-batch", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu-tflops", default="10,30", help="sustained GPU TFLOP/s, low,high")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    low, high = (float(v) for v in args.gpu_tflops.split(","))
    rows = []
    for name in args.variants.split(","):
        cfg = load_config(args.preset, [*args.set, *VARIANTS[name]])
        shape, batch = _image_shape(cfg), cfg.train.batch_size
        flops = step_flops(cfg, shape, args.flops_batch) * batch / args.flops_batch
        seconds = step_seconds(cfg, shape, args.timing_batch, args.steps)
        cpu_s = min(seconds) * batch / args.timing_batch
        gpu = (flops / (high * 1e12), flops / (low * 1e12))
        rows.append({
            "variant": name, "batch": batch, "gflop_per_step": flops / 1e9, "timed_batch": args.timing_batch,
            "timed_step_s": seconds, "cpu_step_s": cpu_s, "cpu_gflops": flops / 1e9 / cpu_s,
            "gpu_step_s_low": gpu[0], "gpu_step_s_high": gpu[1], "max_steps": cfg.train.max_steps,
            "gpu_run_hours_low": gpu[0] * cfg.train.max_steps / 3600,
            "gpu_run_hours_high": gpu[1] * cfg.train.max_steps / 3600,
        })  # fmt: skip
        print(
            f"{name:14s} {flops / 1e9:9.0f} GFLOP/step  here {cpu_s:8.1f} s/step ({flops / 1e9 / cpu_s:5.0f} GFLOP/s)"
            f"  GPU at {low:g}-{high:g} TFLOP/s: {gpu[0]:.2f}-{gpu[1]:.2f} s/step,"
            f" {cfg.train.max_steps} steps {rows[-1]['gpu_run_hours_low']:.1f}-{rows[-1]['gpu_run_hours_high']:.1f} h",
            flush=True,
        )
    if args.json:
        out = {
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
            "command": "PYTHONPATH=. python bench/step_cost.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "records": rows,
        }
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=1)
    return 0


def _image_shape(cfg) -> tuple[int, ...]:
    """The row shape of the preset's dataset (its manifest), e.g. ``(1, 28, 28)``."""
    from rfdist.data.reader import open_dataset

    return tuple(open_dataset(cfg.data.path).shape)


if __name__ == "__main__":
    raise SystemExit(main())
