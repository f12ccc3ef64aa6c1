"""The GPU kit's steps, one per process: ``python bench/gpu_steps.py STEP --device cuda|cpu [--tiny]``.

Each step prints one JSON line last: ``{"passed": bool, "figures": {...}}`` (or ``"skipped":
reason``). Every step first blocks ``import ray`` / ``import mlflow`` (a meta-path hook that
raises ImportError), so a run proves the math, the engine, the config and the pyarrow reading
work where Ray and MLflow are absent — as on the GPU machine. ``bench/gpu_check.py`` runs them
with time limits and collects the JSON; ``--tiny`` is the CPU dry run's size.

Steps: ``env`` (torch, CUDA, GPU, packages; one train_step), ``sync`` (CG and the surrogate under
``torch.cuda.set_sync_debug_mode("error")``), ``make-data`` (a small real-MNIST Parquet),
``train`` (engine ``fit`` on Parquet rows, checkpoint, reload, test log-likelihood), ``ddp``
(two ranks via torchrun; ``ddp-worker`` is one rank).
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("ray", "mlflow")


class _Blocker(importlib.abc.MetaPathFinder):
    """Makes ``import ray`` / ``import mlflow`` (and their submodules) fail like an absent package."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked by the GPU kit (absent on the GPU machine)")
        return None


def block_ray_and_mlflow() -> None:
    """Install the blocker first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _Blocker) for f in sys.meta_path):
        sys.meta_path.insert(0, _Blocker())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            raise RuntimeError(f"{name} was imported before the blocker was installed")


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


# --------------------------------------------------------------------------------------- env


def _driver_version() -> str | None:
    """The NVIDIA driver's version from NVML (nvidia-ml-py), when it is installed."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # a fact to report, never a reason to fail the check
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def _nccl_version() -> str | None:
    """NCCL's version as text (``torch.cuda.nccl.version()`` is a tuple or an int by release)."""
    try:
        import torch.cuda.nccl as nccl

        version = nccl.version()
    except Exception:  # a fact to report, never a reason to fail the check
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple | list) else str(version)


def step_env(args: argparse.Namespace) -> dict[str, Any]:
    """Torch/CUDA/GPU facts, package versions, and one train_step of a small model on the device."""
    import torch

    import rfdist.config  # pydantic + yaml: carried as wheels on the GPU machine
    import rfdist.core.density
    import rfdist.core.flows
    import rfdist.core.volume
    import rfdist.data.reader  # pyarrow
    import rfdist.runtime.checkpoint
    from rfdist import ModelSpec, build_model
    from rfdist.core.engine import LossOptions, train_step

    figures: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "packages": {
            p: _version(p)
            for p in ("numpy", "pyarrow", "zuko", "pydantic", "pydantic-core", "pyyaml", "scipy", "pytest")
        },
        "ray_mlflow": "blocked (imports raise ImportError in every kit step)",
        "rfdist_from": str(Path(rfdist.core.volume.__file__).resolve().parents[1]),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        figures.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            gpu_count=torch.cuda.device_count(),
            nccl=_nccl_version(),
            driver=_driver_version(),
            bf16=torch.cuda.is_bf16_supported(),
        )
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        return {"passed": False, "figures": figures, "error": "torch.cuda.is_available() is False"}
    torch.manual_seed(0)
    model = build_model(ModelSpec(data_shape=(8,), latent_dim=3, flow_hidden=(32, 32))).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(64, 8, device=device)
    results = [
        train_step(model, optimizer, x, LossOptions(estimator=e, matvec="vjp", preconditioner="gram"))
        for e in ("exact", "hutchinson")
    ]
    figures["train_step_loss"] = {e: r.metrics["loss"] for e, r in zip(("exact", "hutchinson"), results)}
    finite = all(math.isfinite(r.metrics["loss"]) and not r.skipped for r in results)
    on_device = next(model.parameters()).device.type == device
    out: dict[str, Any] = {"passed": finite and on_device, "figures": figures}
    if device != "cuda":
        out["note"] = "CPU dry run: the CUDA facts are absent here; the imports and train_step ran on CPU"
    return out


# --------------------------------------------------------------------------------------- sync


def step_sync(args: argparse.Namespace) -> dict[str, Any]:
    """CG and the surrogate with ``set_sync_debug_mode("error")``: any host sync raises.

    Four calls, each judged separately: CG alone on dense SPD systems (``check_every=0``), CG whose
    matvec is v ↦ Jᵀ(Jv) of an MLP decoder (jvp + vjp), and ``logdet_surrogate`` with the
    config's defaults (reverse-mode matvecs, Gram preconditioner, 4 iterations) and with
    forward-mode matvecs. Setup (building inputs) runs before the mode is switched on. On CPU the
    same calls run without the mode (the debug mode is CUDA-only): the check is then skipped, but a
    call that raises still fails it.
    """
    import contextlib

    import torch
    from torch.func import jvp, vjp

    from rfdist.core.volume import conjugate_gradient, logdet_surrogate

    torch.manual_seed(0)
    dev = args.device
    d, D, B = 20, 784, 64
    q, _ = torch.linalg.qr(torch.randn(32, 30, 30, device=dev, dtype=torch.float64))
    a = q @ torch.diag_embed(torch.logspace(0, 3, 30, device=dev, dtype=torch.float64).expand(32, 30))
    a = a @ q.transpose(-1, -2)
    b = torch.randn(32, 30, device=dev, dtype=torch.float64)
    net = torch.nn.Sequential(
        torch.nn.Linear(d, 256),
        torch.nn.Tanh(),
        torch.nn.Linear(256, 256),
        torch.nn.Tanh(),
        torch.nn.Linear(256, D),
    ).to(dev)
    z = torch.randn(B, d, device=dev)
    rhs = torch.randn(B, d, device=dev)

    def gram(v: torch.Tensor) -> torch.Tensor:
        _, jv = jvp(net, (z,), (v,))
        _, pull = vjp(net, z)
        return pull(jv)[0]

    cases = {
        "cg_dense": lambda: conjugate_gradient(
            lambda v: (a @ v.unsqueeze(-1)).squeeze(-1), b, tol=0.0, max_iters=40, check_every=0
        )[0],
        "cg_jvp_vjp_matvec": lambda: conjugate_gradient(gram, rhs, tol=1e-4, max_iters=20, check_every=0)[0],
        "surrogate_vjp_gram": lambda: logdet_surrogate(
            net,
            z,
            num_samples=1,
            matvec="vjp",
            preconditioner="gram",
            cg_max_iters=d,
            precond_rows=8,
            check_every=0,
        ),
        "surrogate_jvp": lambda: logdet_surrogate(
            net, z, num_samples=1, matvec="jvp", preconditioner="none", cg_max_iters=13, check_every=0
        ),
    }
    cuda = dev == "cuda"
    figures: dict[str, Any] = {}
    for name, call in cases.items():
        call()  # warm-up (kernels, cuBLAS handles) outside the checked region
        _sync(dev)
        if cuda:
            torch.cuda.set_sync_debug_mode("error")
        try:
            out = call()
            figures[name] = "no host sync" if cuda else "ran (no sync check on CPU)"
        except Exception as exc:  # the sync debug mode raises RuntimeError at the first sync
            if not cuda:
                raise
            figures[name] = "SYNC: " + (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            out = None
        finally:
            if cuda:
                with contextlib.suppress(Exception):
                    torch.cuda.set_sync_debug_mode("default")
        if out is not None and not bool(torch.isfinite(out).all()):
            figures[name] = "non-finite result"
    if not cuda:
        return {
            "skipped": "set_sync_debug_mode is CUDA-only: the calls ran on CPU, no sync check",
            "figures": figures,
        }
    passed = figures["cg_dense"] == figures["cg_jvp_vjp_matvec"] == "no host sync"
    return {
        "passed": passed,
        "figures": figures,
        "note": "passed = the CG loop itself never syncs; the surrogate rows say whether the "
        "whole estimator (probes, preconditioner, statistics) also stays on the device",
    }


# --------------------------------------------------------------------------------------- data


def step_make_data(args: argparse.Namespace) -> dict[str, Any]:
    """A small real-MNIST Parquet dataset (train/val/test) at ``--out``, via rfdist's writer."""
    import numpy as np

    from rfdist.data.parquet import write_dataset
    from rfdist.data.sources import generate

    train_rows, test_rows = (args.train_rows, args.test_rows)
    generated = generate("mnist", rows=train_rows, seed=0)
    splits = {
        "train": generated.splits["train"],
        "val": {k: v[: max(test_rows // 2, 1)] for k, v in generated.splits["val"].items()},
        "test": {k: v[:test_rows] for k, v in generated.splits["test"].items()},
    }
    flat = np.asarray(splits["train"]["x"], dtype=np.float32).reshape(len(splits["train"]["x"]), -1)
    stats = {"mean": flat.mean(0).tolist(), "std": np.maximum(flat.std(0), 1e-6).tolist()}
    manifest = write_dataset(
        args.out,
        splits,
        shape=generated.shape,
        shard_rows=50_000,
        extra={"name": "mnist", "seed": 0, "stats": stats, "note": "GPU kit subset"},
    )
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    rows = {s: e["rows"] for s, e in manifest["splits"].items()}
    return {
        "passed": True,
        "figures": {"rows": rows, "mb": round(size / 2**20, 2), "mean_pixel": float(flat.mean())},
    }


# --------------------------------------------------------------------------------------- train


def _config(data: str, tiny: bool, steps: int, cfg_file: str):
    from rfdist.config import load_config

    sets = [f"data.path={data}", f"train.max_steps={steps}", "estimator.name=hutchinson"]
    if tiny:  # the CPU dry run: a narrow conv flow, small batches
        sets += [
            "model.scales=1",
            "model.couplings=1",
            "model.conv_hidden=8",
            "model.conv_blocks=1",
            "model.density_layers=2",
            "model.density_hidden=[16, 16]",
            "train.batch_size=16",
        ]
    return load_config(cfg_file, sets)


def step_train(args: argparse.Namespace) -> dict[str, Any]:
    """Engine ``fit`` on real MNIST rows read with pyarrow, on the device; checkpoint and reload.

    The rfdist/presets/mnist.yaml preset (paper width; ``--tiny`` narrows it) is validated by the
    config layer, the rows come from Parquet through ``rfdist.data.reader``, the model trains with
    the single-process loop, ``state.pt`` is written and read back (``weights_only``) into a fresh
    model whose test log-likelihood must match. Steps: after a 1-step warm-up, a 3-step probe times
    a step, then as many steps as ``--train-seconds`` allows (``--max-steps`` at most).
    """
    import tempfile

    import torch

    from rfdist.core.builders import ModelSpec, build_model
    from rfdist.core.engine import evaluate_nll, fit
    from rfdist.data.preprocess import batch_preprocessor
    from rfdist.data.reader import load_split, open_dataset
    from rfdist.runtime.checkpoint import TrainingState, load_state, save_state

    device = args.device
    cfg = _config(args.data, args.tiny, args.max_steps, str(ROOT / "rfdist/presets/mnist.yaml"))
    t0 = time.perf_counter()
    info = open_dataset(cfg.data.path)
    prep = batch_preprocessor(cfg.data.preprocess, tuple(info.shape), lam=cfg.data.logit_lambda)
    train = prep(load_split(info, "train")).to(device)
    test = prep(load_split(info, "test")[: args.test_rows]).to(device)
    read_s = time.perf_counter() - t0
    torch.manual_seed(cfg.seed)
    spec = cfg.model.spec(tuple(info.shape), cfg.seed)
    model = build_model(spec).to(device)
    options = cfg.loss_options()
    eval_batch = min(100, test.shape[0])
    nll_before = evaluate_nll(model, test, batch_size=eval_batch)
    kw = dict(
        batch_size=cfg.train.batch_size, lr=cfg.train.lr, options=options, grad_clip=cfg.train.grad_clip
    )
    fit(model, train, steps=1, seed=1, **kw)  # warm-up: CUDA context, kernels, allocator
    _sync(device)
    t1 = time.perf_counter()
    fit(model, train, steps=3, seed=1, **kw)  # probe: the step time
    _sync(device)
    probe_s = (time.perf_counter() - t1) / 3
    steps = min(args.max_steps, max(10, int(args.train_seconds / max(probe_s, 1e-3))))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t2 = time.perf_counter()
    history = fit(model, train, steps=steps, seed=2, **kw)
    _sync(device)
    train_s = time.perf_counter() - t2
    peak = _peak_mb(device)
    nll_after = evaluate_nll(model, test, batch_size=eval_batch)
    with tempfile.TemporaryDirectory() as tmp:
        save_state(
            tmp,
            TrainingState(
                model=model.state_dict(),
                optimizer=None,
                scheduler=None,
                step=steps,
                rng=None,
                config={"kit": "gpu_check"},
                spec=spec.to_dict(),
                metrics={"test_nll": nll_after},
            ),
        )
        state = load_state(tmp, map_location=device)
    fresh = build_model(ModelSpec.from_dict(state.spec)).to(device)
    fresh.load_state_dict(state.model)
    fresh.eval()
    model.eval()
    with torch.no_grad():
        rows = test[:eval_batch]
        reload_diff = float((fresh.log_prob(rows) - model.log_prob(rows)).abs().max())
    nll_reloaded = evaluate_nll(fresh, test, batch_size=eval_batch)
    skipped = sum(h["skipped"] for h in history)
    step_times = sorted(h["step_s"] for h in history)
    figures = {
        "device": device,
        "arch": {k: getattr(cfg.model, k) for k in ("scales", "couplings", "conv_hidden", "conv_blocks")},
        "estimator": options.estimator,
        "train_rows": int(train.shape[0]),
        "test_rows": int(test.shape[0]),
        "parquet_read_s": round(read_s, 2),
        "steps": steps,
        "batch": cfg.train.batch_size,
        "step_ms_median": round(1000 * step_times[len(step_times) // 2], 2),
        "examples_per_s": round(cfg.train.batch_size * steps / train_s, 1),
        "peak_mb": None if peak is None else round(peak, 1),
        "test_nll_logit_before": nll_before,
        "test_nll_logit_after": nll_after,
        "test_nll_logit_reloaded": nll_reloaded,
        "reload_max_abs_diff": reload_diff,
        "skipped_steps": skipped,
    }
    tol = 1e-4 * max(1.0, abs(nll_after))  # same weights; GPU kernels may differ in the last bits
    failed = [
        why
        for ok, why in (
            (math.isfinite(nll_after), "test NLL is not finite"),
            (nll_after < nll_before, "test NLL did not improve with training"),
            (reload_diff <= tol, "the reloaded model's log_prob differs"),
            (abs(nll_reloaded - nll_after) <= tol, "the reloaded model's test NLL differs"),
            (skipped < steps, "every step was skipped (non-finite)"),
        )
        if not ok
    ]
    result: dict[str, Any] = {"passed": not failed, "figures": figures}
    if failed:
        result["error"] = "; ".join(failed)
    return result


# --------------------------------------------------------------------------------------- ddp


def step_ddp_worker(args: argparse.Namespace) -> dict[str, Any] | None:
    """One DDP rank (under torchrun): train_step on a shard; ranks must end with equal weights."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from rfdist import ModelSpec, build_model
    from rfdist.core.engine import LossOptions, train_step
    from rfdist.data.synthetic import VonMisesCircle

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = args.device
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(
        args.backend,
        device_id=torch.device("cuda", torch.cuda.current_device())
        if (device == "cuda" and args.backend == "nccl")
        else None,
    )
    torch.manual_seed(0)  # same init on every rank (DDP also broadcasts rank 0's weights)
    model = build_model(ModelSpec(data_shape=(2,), latent_dim=1, flow_hidden=(32, 32))).to(device)
    ddp = DistributedDataParallel(
        model, device_ids=[torch.cuda.current_device()] if device == "cuda" else None
    )
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    data = VonMisesCircle().sample(4000, generator=torch.Generator().manual_seed(rank + 1)).to(device)
    options = LossOptions(estimator="hutchinson", matvec="vjp", preconditioner="gram")
    t0 = time.perf_counter()
    norms = []
    for step in range(args.ddp_steps):
        batch = data[(step * 200) % 3800 : (step * 200) % 3800 + 200]
        norms.append(train_step(ddp, optimizer, batch, options, grad_clip=10.0).metrics["grad_norm"])
    _sync(device)
    step_s = (time.perf_counter() - t0) / args.ddp_steps
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    norm_t = torch.tensor(norms, device=device)
    norms_all = [torch.zeros_like(norm_t) for _ in range(world)]
    dist.all_gather(norms_all, norm_t)
    dist.destroy_process_group()
    if rank != 0:
        return None
    weight_diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
    norm_diff = max(float((n - norms_all[0]).abs().max()) for n in norms_all)
    result = {
        "passed": weight_diff == 0.0 and norm_diff <= 1e-5 and all(math.isfinite(n) for n in norms),
        "figures": {
            "backend": args.backend,
            "world_size": world,
            "device": device,
            "gpus_used": torch.cuda.device_count() if device == "cuda" else 0,
            "steps": args.ddp_steps,
            "step_ms": round(1000 * step_s, 2),
            "weight_max_diff_across_ranks": weight_diff,
            "grad_norm_max_diff_across_ranks": norm_diff,
        },
    }
    Path(args.result).write_text(json.dumps(result))
    return result


# --------------------------------------------------------------------------------------- main

STEPS = {
    "env": step_env,
    "sync": step_sync,
    "make-data": step_make_data,
    "train": step_train,
    "ddp-worker": step_ddp_worker,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="CPU dry-run sizes")
    parser.add_argument("--data", default=None, help="MNIST Parquet folder (train)")
    parser.add_argument("--out", default=None, help="output folder (make-data)")
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--ddp-steps", type=int, default=20)
    parser.add_argument("--result", default=None, help="ddp-worker: rank 0 writes its JSON here")
    args = parser.parse_args(argv)
    block_ray_and_mlflow()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    result = STEPS[args.step](args)
    if result is not None:
        print(json.dumps(result), flush=True)
        return 0 if result.get("passed", True) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
