"""Volume-term estimators: per-step time, peak memory, matvecs and gradient error, in one run.

    python bench/estimators.py [--json bench/results/estimators.json] [--device cpu|cuda] [--threads N]

Cases: the paper's shapes — von-mises (D=2, d=1, B=1000), miniboone (D=43, d=21, B=400:
10 affine couplings, MLP [128]×4 tanh, low-dim flow 5 × [32, 32]; ``miniboone-realnvp``: the
same with the paper's RealNVP low-dim flow instead of rfdist's default NSF), mnist (D=784, d=20, B=50,
multi-scale conv flow) — and a d-sweep d ∈ {2, 5, 10, 20, 40} at D=64. For each: a
``train_step`` with the two-step loss (no volume term), the exact estimator, and hutchinson
with K=1 and K=4 in two variants: ``reference`` (forward-mode jvp matvecs, 13 plain zero-start
CG iterations, as the paper's code spends at d≈20) and ``rfdist`` (the config's defaults: vjp
matvecs, Gram preconditioner, 4 CG iterations without a host sync).

Timing: all variants of a shape run in one process, interleaved round by round (``--warmup``
rounds, then ``--steps``); ``step_s`` is each variant's median and ``x_ts`` the median over
rounds of (variant step / two-step step of the same round), robust to a shared machine's load
changing between rounds. ``x_legacy`` is the same against the ``legacy`` row: today's
(2026-11-30) two-step step — zuko's lazy couplings and the train_step of that day, frozen
here — the fixed yardstick the speed targets are measured against. Peak memory: one step per variant in a fresh process — on CUDA
``torch.cuda.max_memory_allocated``; on CPU the RSS high-water mark (``ru_maxrss``) minus the
RSS just before the step (model, data and imports excluded; ``--no-memory`` skips these).
Gradient error (hutchinson rows): the relative error of the volume-term gradient w.r.t. the flow parameters against the exact one, averaged over
``--draws`` probe draws with the same seeds for both variants; ``solve_err`` is the part due
to the CG truncation alone (vs a converged solve with the same probes).

Image shapes, run only when named (``--shapes image64,image-sweep``): ``image64`` (3×64×64,
D=12,288, d=64, 3 scales; B=16 on CPU, 64 with ``--image-arch paper``) with two-step,
hutchinson K=1 (defaults, and the :data:`OVERRIDES` rows: a fresh Gram preconditioner each step,
none with 4 / 6 CG iterations; timing and gradient error, the exact gradient chunked by 16) and
exact chunked by each of ``--image-chunks`` (peak memory each; the first size also timed, in its
own process with its own two-step baseline, so an out-of-memory exact step loses no other row).
A variant that reuses its Gram preconditioner (``precond_every`` > 1) is timed without a rebuild
plus 1/``precond_every`` of a rebuild timed in the same round (``precond_build_s``); ``image-sweep`` = ``d-sweep-{1x28x28,3x32x32,3x64x64}-d64``,
the same 2-scale flow at fixed d, for the volume term's cost relative to the two-step step as
D grows.

At miniboone the :data:`TABULAR_OVERRIDES` rows time the Gram preconditioner's alternatives
(reused for 8 steps, half the CG budget, none) with their gradient error. ``--compile`` adds
two-step, hutchinson K=1 and exact rows through ``RectangularFlow.compile_loss`` (``torch.compile``, compiled
in the warm-up round, so the rows are steady-state steps without the compile time);
``--profile`` profiles one more step per variant and prints its top ops by self CPU time (and
stores them in the JSON's ``profile`` field).

On CPU the mnist case uses a reduced conv width (``--image-arch cpu``: 1 scale, 2 couplings,
16 channels × 1 block) so the whole run fits in ~10 minutes; ``--image-arch paper`` (2 scales,
3 couplings, 64 channels × 8 blocks) is the GPU setting. The paper-width memory check on CPU
(~7 min; unchunked exact needs > 16 GB there, so leave it out on a small machine)::

    python bench/estimators.py --shapes mnist --image-arch paper --memory-only \
        --variants two_step,hutchinson-k1,exact-chunked
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

IMAGE_ARCH = {
    "cpu": {"scales": 1, "couplings": 2, "conv_hidden": 16, "conv_blocks": 1},
    "paper": {"scales": 2, "couplings": 3, "conv_hidden": 64, "conv_blocks": 8},
}

# 64×64×3 at d=64 (>= 3 scales); cpu: a width this machine can step in seconds
IMAGE64_ARCH = {
    "cpu": {"scales": 3, "couplings": 1, "conv_hidden": 16, "conv_blocks": 1},
    "paper": {"scales": 3, "couplings": 3, "conv_hidden": 64, "conv_blocks": 8},
}
IMAGE_SWEEP = {"1x28x28": [1, 28, 28], "3x32x32": [3, 32, 32], "3x64x64": [3, 64, 64]}

REFERENCE = {"matvec": "jvp", "preconditioner": "none", "cg_tol": 0.0, "cg_max_iters": 13, "check_every": 0}
# image64's extra hutchinson rows: rfdist's defaults with one option changed (the K=1 target)
OVERRIDES: dict[str, dict[str, Any]] = {
    "gram-fresh": {"precond_every": 1},  # the Gram preconditioner rebuilt every step (before 2026-12-01)
    "gram-every8": {"precond_every": 8},  # rebuilt every 8 steps (image64's default period)
    "gram-rows2": {"precond_rows": 2},  # a quarter of the rows (d·2 tangent rows)
    "gram-cg2": {"cg_max_iters": 2},  # half the preconditioned CG budget
    "gram-every8-cg2": {"precond_every": 8, "cg_max_iters": 2},
    "none-cg4": {"preconditioner": "none", "precond_every": 1, "cg_max_iters": 4},
    "none-cg6": {"preconditioner": "none", "precond_every": 1, "cg_max_iters": 6},
}

# miniboone's extra rows: does the Gram preconditioner's cost at d=21 pay (reuse, half the budget)?
TABULAR_OVERRIDES = ("gram-every8", "gram-cg2", "none-cg4")


def shapes(image_arch: str, sweep_ds: list[int], image_d: int = 64) -> dict[str, dict[str, Any]]:
    """Model spec (as a dict) and batch size per named shape."""
    out: dict[str, dict[str, Any]] = {
        "von-mises": {
            "spec": {
                "data_shape": [2],
                "latent_dim": 1,
                "flow_layers": 5,
                "flow_hidden": [10, 10],
                "density_layers": 2,
                "density_hidden": [16, 16],
            },
            "batch": 1000,
        },
        "miniboone": {
            "spec": {
                "data_shape": [43],
                "latent_dim": 21,
                "flow_layers": 10,
                "flow_hidden": [128] * 4,
                "activation": "tanh",
                "density_layers": 5,
                "density_hidden": [32, 32],
            },
            "batch": 400,
        },
        "mnist": {
            "spec": {
                "data_shape": [1, 28, 28],
                "latent_dim": 20,
                "flow": "multiscale",
                **IMAGE_ARCH[image_arch],
                "density_layers": 5,
                "density_hidden": [64, 64],
            },
            "batch": 50,
        },
    }
    # the paper's own MINIBOONE model: its RealNVP prior (5 affine couplings, [32, 32]) for p_U
    out["miniboone-realnvp"] = {
        "spec": {**out["miniboone"]["spec"], "density": "realnvp"},
        "batch": out["miniboone"]["batch"],
    }
    image_batch = 64 if image_arch == "paper" else 16
    out["image64"] = {
        "spec": {
            "data_shape": [3, 64, 64],
            "latent_dim": image_d,
            "flow": "multiscale",
            **IMAGE64_ARCH[image_arch],
            "density_layers": 5,
            "density_hidden": [64, 64],
        },
        "batch": image_batch,
    }
    for name, data_shape in IMAGE_SWEEP.items():  # the D-sweep: fixed d and architecture (2 scales)
        out[f"d-sweep-{name}-d{image_d}"] = {
            "spec": {**out["image64"]["spec"], "data_shape": data_shape, "scales": 2},
            "batch": image_batch,
        }
    for d in sweep_ds:
        out[f"d-sweep-D64-d{d}"] = {
            "spec": {
                "data_shape": [64],
                "latent_dim": d,
                "flow_layers": 5,
                "flow_hidden": [64, 64],
                "activation": "tanh",
                "density_layers": 2,
                "density_hidden": [32, 32],
            },
            "batch": 100,
        }
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _options(
    estimator: str, variant: str, k: int, d: int, iters: int, chunk: int | None = None, batch: int = 1000
):
    from rfdist.core.engine import LossOptions

    if estimator == "two_step":  # variant "legacy": today's step, the fixed yardstick
        return LossOptions(mode="two_step")
    if estimator == "exact":
        return LossOptions(estimator="exact", chunk_size=chunk)
    if variant == "reference":  # the paper's code: min(11, d) iterations + 2 products ≈ 13 at d≈20
        extra = {**REFERENCE, "cg_max_iters": min(REFERENCE["cg_max_iters"], d)}
    else:  # rfdist's defaults (rfdist.config.EstimatorConfig), optionally another CG budget
        from rfdist.config import EstimatorConfig

        est = EstimatorConfig(name="hutchinson")
        extra = {
            "matvec": est.matvec,
            "preconditioner": est.preconditioner,
            "precond_rows": est.gram_rows(d, batch),
            "precond_every": est.gram_every(d, batch),
            "cg_tol": est.cg_tol,
            "check_every": est.check_every,
            "cg_max_iters": min(iters, d) if iters else est.cg_budget(d),
            **OVERRIDES.get(variant, {}),
        }
    return LossOptions(estimator="hutchinson", num_samples=k, **extra)


def _build(case: dict[str, Any], device: str):
    import torch

    from rfdist import ModelSpec, build_model

    spec = ModelSpec.from_dict(case["spec"])
    model = build_model(spec).to(device)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # leave the identity initialisation: J^T J = I would flatter CG
        for p in model.flow.parameters():
            p.add_(case.get("perturb", 0.05) * torch.randn(p.shape, generator=gen).to(device))
    x = model.sample(case["batch"]).detach()
    x = x + 0.05 * torch.randn(x.shape, generator=gen).to(device)
    return model, x


def _legacy_model(model):
    """A copy of ``model`` whose affine couplings run through zuko's lazy transforms, as
    rfdist's couplings did before the fused tangent paths: the fixed yardstick (``x_legacy``)."""
    import copy
    import types

    from rfdist.core.flows.base import Chain
    from rfdist.core.flows.coupling import AffineCoupling, _ZukoCoupling

    legacy = copy.deepcopy(model)
    for layer in legacy.modules():
        if isinstance(layer, AffineCoupling):
            for name in ("forward", "inverse", "forward_and_ladj", "inverse_and_ladj"):
                setattr(layer, name, types.MethodType(getattr(_ZukoCoupling, name), layer))
            layer.supports_tangents = False
        if isinstance(layer, Chain):  # the layer-by-layer loops of that day (no half-passing)
            layer.forward = types.MethodType(_legacy_chain_forward, layer)
            layer.inverse = types.MethodType(_legacy_chain_inverse, layer)
    legacy.density._plain = False  # zuko's own density objects, as on 2026-11-30
    legacy.share_innermost = False  # encode, then decode (no shared innermost coupling)
    return legacy


def _legacy_chain_forward(chain, z):
    for layer in chain.layers:
        z = layer(z)
    return z


def _legacy_chain_inverse(chain, x):
    for layer in reversed(chain.layers):
        x = layer.inverse(x)
    return x


def _legacy_train_step(model, optimizer, x, options) -> dict[str, float]:
    """rfdist.core.engine.train_step as of 2026-11-30 (frozen, for the ``legacy`` yardstick)."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss, parts = model(x, **options.kwargs())
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    finite = torch.isfinite(grad_norm) & torch.isfinite(loss.detach())
    values = torch.stack(
        [v.detach().float().reshape(()) for v in parts.values()]
        + [grad_norm.detach().float(), finite.float()]
    )
    metrics = dict(zip([*parts, "grad_norm", "finite"], values.tolist(), strict=True))
    if metrics.pop("finite") >= 0.5:
        optimizer.step()
    return metrics


def _grad_errors(model, x, ours: dict[int, Any], opts_ref, draws: int, chunk: int | None = None):
    """Volume-term gradient error vs exact, per hutchinson variant (``ours``: index -> options)
    and for the reference, all with the same probe seeds. ``chunk``: the exact gradient's
    chunk size (image shapes: the unchunked one needs the graph of d·B image passes). A variant
    that reuses its Gram preconditioner (``precond_every`` > 1) gets one built on *another*
    batch, as it would be in training."""
    import torch

    from rfdist.core.volume import GramCache, gram_inverse, logdet_exact, logdet_surrogate

    params = [p for p in model.flow.parameters() if p.requires_grad]
    u = model.encode(x).detach()
    ops = model.tangent_ops()

    def grad(value):
        gs = torch.autograd.grad(value.sum(), params, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, gs)])

    g_exact = grad(logdet_exact(model.decode_flat, u, chunk_size=chunk, tangents=ops))
    d = u.shape[1]
    gen = torch.Generator().manual_seed(2)
    other = (model.sample(x.shape[0]) + 0.05 * torch.randn(x.shape, generator=gen).to(x.device)).detach()
    u_other = model.encode(other).detach()

    def hutch(opts, seed, **over):
        every = over.pop("precond_every", opts.precond_every) or 1
        kw = {
            "num_samples": opts.num_samples,
            "cg_tol": opts.cg_tol,
            "cg_max_iters": opts.cg_max_iters,
            "matvec": opts.matvec,
            "preconditioner": opts.preconditioner,
            "precond_rows": opts.precond_rows,
            "check_every": opts.check_every,
            **over,
        }
        if every > 1 and kw["preconditioner"] == "gram":
            cache = GramCache(every)
            cache.get(
                lambda: gram_inverse(model.decode_flat, u_other, rows=opts.precond_rows, tangents=ops), u
            )
            kw["precond_cache"] = cache
        gen = torch.Generator(device=u.device).manual_seed(seed)
        return grad(logdet_surrogate(model.decode_flat, u, generator=gen, tangents=ops, **kw))

    first = next(iter(ours.values()))
    errs: dict[Any, dict[str, list[float]]] = {key: {"err": [], "solve": []} for key in [*ours, "ref"]}
    norm = g_exact.norm()
    for seed in range(draws):
        # a converged solve; at image shapes plain CG to 1e-6 (3d iterations at tol 0 lose
        # float32 orthogonality at d=64, and 8 Gram rows cost ~100 matvecs there)
        converge = (
            {"preconditioner": "none", "precond_every": 1, "cg_tol": 1e-6, "check_every": 8}
            if chunk
            else {"preconditioner": "gram", "precond_rows": 8, "cg_tol": 0.0}
        )
        solved = hutch(first, seed, cg_max_iters=3 * d, **converge)
        solved_err = (solved - g_exact).norm() / norm
        for key, opts in [*ours.items(), ("ref", opts_ref)]:
            g = hutch(opts, seed)
            errs[key]["err"].append(float((g - g_exact).norm() / norm))
            errs[key]["solve"].append(float((g - solved).norm() / norm))
        errs["ref"].setdefault("converged", []).append(float(solved_err))
    out = {}
    for key in ours:
        out[key] = {
            "grad_err_ours": statistics.fmean(errs[key]["err"]),
            "grad_err_ref": statistics.fmean(errs["ref"]["err"]),
            "grad_err_ours_solve": statistics.fmean(errs[key]["solve"]),
            "grad_err_ref_solve": statistics.fmean(errs["ref"]["solve"]),
            "grad_err_converged": statistics.fmean(errs["ref"]["converged"]),
        }
    return out


def _variant_opts(v: dict[str, Any], d: int, job: dict[str, Any]):
    batch = job["case"]["batch"]
    return _options(v["estimator"], v["variant"], v["num_samples"], d, job["iters"], v.get("chunk"), batch)


def _matvec_record(metrics: dict[str, float], k: int, batch: int) -> dict[str, float]:
    rows = metrics.get("precond_tangent_rows", 0.0)
    cg = metrics["matvecs"]
    # the preconditioner's d·rows tangent rows, in units of one JᵀJv on all K·B rows (~2 passes)
    pre = rows / (2 * k * batch)
    return {"cg_matvecs": cg, "precond_matvecs": pre, "matvecs": cg + pre, "extra_products": 2}


def run_timing(job: dict[str, Any]) -> list[dict[str, Any]]:
    """All variants of one shape in this process, steps interleaved round by round.

    The machine is shared, so load changes between rounds; every round runs each variant once,
    and ``x_ts`` is the median over rounds of (variant step / two-step step in that round).
    """
    import copy

    import torch

    from rfdist.core.engine import make_optimizer, train_step

    torch.manual_seed(0)
    device = job["device"]
    model, x = _build(job["case"], device)
    d = model.latent_dim
    variants = job["variants"]
    legacy = [v["variant"] == "legacy" for v in variants]
    models = [_legacy_model(model) if old else copy.deepcopy(model) for old in legacy]
    for m, v in zip(models, variants, strict=True):
        if v["variant"] == "compiled":  # compiled in the warm-up round
            m.compile_loss(dynamic=False)
    opts = [_variant_opts(v, d, job) for v in variants]
    optims = [
        torch.optim.Adam(m.parameters(), lr=1e-5) if old else make_optimizer(m.parameters(), 1e-5)
        for m, old in zip(models, legacy, strict=True)
    ]
    times: list[list[float]] = [[] for _ in variants]
    builds: list[list[float]] = [[] for _ in variants]
    last: list[dict[str, float]] = [{} for _ in variants]
    for round_ in range(job["warmup"] + job["steps"]):
        for i in range(len(variants)):
            start = time.perf_counter()
            if legacy[i]:
                last[i] = _legacy_train_step(models[i], optims[i], x, opts[i])
            else:
                last[i] = train_step(models[i], optims[i], x, opts[i]).metrics
            if device == "cuda":
                torch.cuda.synchronize()
            step = time.perf_counter() - start
            build = _gram_rebuild_s(models[i], x, opts[i], device)
            if round_ >= job["warmup"]:
                times[i].append(step + build / (getattr(opts[i], "precond_every", None) or 1))
                builds[i].append(build)
    profiles = _profiles(models, optims, x, opts, legacy) if job.get("profile") else None
    base = times[0]  # variants[0] is two_step
    yardstick = times[legacy.index(True)] if any(legacy) else None
    ours = {
        i: o
        for i, (v, o) in enumerate(zip(variants, opts, strict=True))
        if v["estimator"] == "hutchinson" and v["variant"] != "reference" and v["num_samples"] == 1
    }
    errors = {}
    if ours and job["draws"] and d >= 5:
        ref = _options("hutchinson", "reference", 1, d, job["iters"])
        errors = _grad_errors(model, x, ours, ref, job["draws"], job.get("grad_chunk"))
    out = []
    for i, (v, t, metrics) in enumerate(zip(variants, times, last, strict=True)):
        rec: dict[str, Any] = {
            "step_s": statistics.median(t),
            "x_ts": statistics.median(a / b for a, b in zip(t, base, strict=True)),
        }
        if yardstick is not None:  # × today's (2026-11-30) two-step step, same rounds
            rec["x_legacy"] = statistics.median(a / b for a, b in zip(t, yardstick, strict=True))
        if v["estimator"] == "hutchinson":
            rec.update(_matvec_record(metrics, v["num_samples"], x.shape[0]))
            rec["precond_every"] = opts[i].precond_every
            if any(builds[i]):
                rec["precond_build_s"] = statistics.median(builds[i])
            rec.update(errors.get(i, {}))
        if profiles:
            rec["profile"] = profiles[i]
        out.append(rec)
    return out


def _profiles(models, optims, x, opts, legacy: list[bool], top: int = 12) -> list[dict[str, Any]]:
    """One more step per variant under ``torch.profiler``: the ``top`` ops by self CPU time
    (name, calls, self ms) and the step's total, to see where a step's time goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from rfdist.core.engine import train_step

    out = []
    for model, optim, opt, old in zip(models, optims, opts, legacy, strict=True):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            if old:
                _legacy_train_step(model, optim, x, opt)
            else:
                train_step(model, optim, x, opt)
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        events.sort(key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events) / 1000
        ops = [[e.key, e.count, round(e.self_cpu_time_total / 1000, 3)] for e in events[:top]]
        calls = sum(e.count for e in events)
        out.append({"self_ms": round(total, 3), "op_calls": calls, "top": ops})
        torch.manual_seed(0)
    return out


def _profile_text(records: list[dict[str, Any]]) -> str:
    """The ``--profile`` tables: per variant, its top ops by self CPU time."""
    lines = []
    for r in records:
        prof = r.get("profile")
        if not prof:
            continue
        lines.append(
            f"## {r['shape']} {r['estimator']} {r['variant']} K={r['num_samples']}: "
            f"{prof['self_ms']:.1f} ms self CPU, {prof['op_calls']} op calls"
        )
        lines += [f"  {ms:8.2f} ms {calls:6d}x  {name}" for name, calls, ms in prof["top"]]
    return "\n".join(lines)


def _gram_rebuild_s(model, x, opts, device: str) -> float:
    """For a variant that reuses its Gram preconditioner: seconds to rebuild it once, timed here
    (and charged 1/``precond_every`` of it per step), with the cache then set to skip the next
    step's rebuild — so every timed step costs the same, rebuild amortised. 0 for others."""
    cache = model.__dict__.get("_gram_cache_state")
    if cache is None or (getattr(opts, "precond_every", None) or 1) <= 1 or opts.preconditioner != "gram":
        return 0.0
    import torch

    from rfdist.core.volume import gram_inverse

    u = model.encode(x).detach()
    start = time.perf_counter()
    gram_inverse(model.decode_flat, u, rows=opts.precond_rows, tangents=model.tangent_ops())
    if device == "cuda":
        torch.cuda.synchronize()
    cache.calls = 1  # the next step reuses the cached inverse; its rebuild was charged here
    return time.perf_counter() - start


def run_memory(job: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one step of one variant, in this (fresh) process."""
    import torch

    from rfdist.core.engine import make_optimizer, train_step

    torch.manual_seed(0)
    device = job["device"]
    model, x = _build(job["case"], device)
    opts = _variant_opts(job["variant"], model.latent_dim, job)
    optimizer = make_optimizer(model.parameters(), 1e-5)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()
    train_step(model, optimizer, x, opts)
    if device == "cuda":
        return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {"peak_mb": max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)}


def _spawn(job: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {job['shape']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _try_spawn(job: dict[str, Any]) -> Any:
    """:func:`_spawn`, but a failed case (e.g. out of memory) becomes ``{"error": ...}`` rows."""
    try:
        return _spawn(job)
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1][:200]
        error = {"error": "out of memory" if "out of memory" in str(exc).lower() else last}
        return [dict(error) for _ in job["variants"]] if job["kind"] == "timing" else error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--draws", type=int, default=2, help="probe draws for the gradient error")
    parser.add_argument(
        "--iters", type=int, default=None, help="rfdist's CG budget (default: the config's, 4 with gram)"
    )
    parser.add_argument("--image-arch", choices=sorted(IMAGE_ARCH), default=None)
    parser.add_argument("--shapes", default=None, help="comma-separated subset of shape names")
    parser.add_argument("--sweep", default="2,5,10,20,40")
    parser.add_argument(
        "--exact-chunk", type=int, default=4, help="chunk_size of the chunked exact row (mnist)"
    )
    parser.add_argument(
        "--image-chunks",
        default="4,16,32",
        help="exact chunk sizes at image64 and the image D-sweep (peak memory of each; the first is timed)",
    )
    parser.add_argument("--image-d", type=int, default=64, help="d of image64 and the image D-sweep")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip peak-memory runs")
    parser.add_argument("--memory-only", action="store_true", help="skip the timing runs")
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset of: two_step, exact, exact-chunked, hutchinson-k1, "
        "hutchinson-k4, reference-k1",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads per worker (default: torch's)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile one step per variant: top ops by self CPU time"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time two-step, hutchinson K=1 and exact with RectangularFlow.compile_loss "
        "(torch.compile; compiled in the warm-up round)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        if job.get("threads"):
            import torch

            torch.set_num_threads(int(job["threads"]))
        print(json.dumps(run_memory(job) if job["kind"] == "memory" else run_timing(job)))
        return

    known = {"two_step", "exact", "exact-chunked", "hutchinson-k1", "hutchinson-k4", "reference-k1"}
    unknown = sorted(set(args.variants.split(",")) - known) if args.variants else []
    if unknown:
        parser.error(
            f"--variants: unknown {', '.join(unknown)} (expected some of {', '.join(sorted(known))})"
        )
    arch = args.image_arch or ("paper" if args.device == "cuda" else "cpu")
    all_shapes = shapes(arch, [int(d) for d in args.sweep.split(",") if d], args.image_d)
    images = {"image64", *(f"d-sweep-{n}-d{args.image_d}" for n in IMAGE_SWEEP)}
    groups = {"image-sweep": [f"d-sweep-{n}-d{args.image_d}" for n in IMAGE_SWEEP]}
    # image shapes only when named (minutes a step on a CPU): --shapes image64,image-sweep
    named = [g for w in args.shapes.split(",") for g in groups.get(w, [w])] if args.shapes else None
    wanted = named or [n for n in all_shapes if n not in images]
    if set(wanted) - set(all_shapes):
        parser.error(
            f"--shapes: unknown {', '.join(sorted(set(wanted) - set(all_shapes)))} "
            f"(expected some of {', '.join(all_shapes)})"
        )
    paper_plan = [  # cheapest and most telling first: an interrupted run keeps the ratios
        ("two_step", "-", 1, None),
        ("two_step", "legacy", 1, None),
        ("hutchinson", "rfdist", 1, None),
        ("hutchinson", "reference", 1, None),
        *(("hutchinson", name, 1, None) for name in OVERRIDES),  # miniboone: timing and grad err
        ("hutchinson", "rfdist", 4, None),
        ("exact", "-", 1, None),
        ("exact", "chunked", 1, args.exact_chunk),
        *(
            (("two_step", "compiled", 1, None), ("hutchinson", "compiled", 1, None), ("exact", "compiled", 1, None))
            if args.compile
            else ()
        ),
    ]
    sweep_plan = [("two_step", "-", 1, None), ("exact", "-", 1, None), ("hutchinson", "rfdist", 1, None)]
    chunks = [int(c) for c in args.image_chunks.split(",") if c]
    image_plan = [  # unchunked exact at D=12288, d=64 needs tens of GB: chunked only
        ("two_step", "-", 1, None),
        ("hutchinson", "rfdist", 1, None),
        *(("hutchinson", name, 1, None) for name in OVERRIDES),  # timing and grad err only
        *(("exact", "chunked", 1, c) for c in chunks),
    ]
    records = []
    started = time.perf_counter()
    for name in wanted:
        case = all_shapes[name]
        image = name in images
        plan = [  # the OVERRIDES rows at image64, some at miniboone
            row
            for row in (image_plan if image else sweep_plan if name.startswith("d-sweep") else paper_plan)
            if row[1] not in OVERRIDES
            or name == "image64"
            or (name == "miniboone" and row[1] in TABULAR_OVERRIDES)
        ]
        variants = [
            {"estimator": e, "variant": v, "num_samples": k, "chunk": c}
            for e, v, k, c in plan
            if (v != "chunked" or (name in ("mnist", *images) and c))
            and not (v == "legacy" and args.memory_only)  # a timing yardstick only
            and (
                args.variants is None
                or _variant_name(e, v, k) in args.variants.split(",")
                or (e == "two_step" and not args.memory_only)  # the timing ratios' baselines
            )
        ]
        if not variants:
            continue
        common = {
            "shape": name,
            "case": case,
            "device": args.device,
            "iters": args.iters,
            # image64: the exact gradient chunked by 16 (~1 GB); the D-sweep rows: none
            "draws": args.draws if name == "image64" or not image else 0,
            "grad_chunk": 16 if image else None,
            "steps": args.steps,
            "warmup": args.warmup,
            "threads": args.threads,
            "profile": args.profile,
        }
        timing = [{} for _ in variants]
        if not args.memory_only and image:
            # exact in its own process with its own two-step baseline (its ratio still interleaved),
            # so an out-of-memory exact step loses no other row; only the first chunk size is timed
            cheap = [v for v in variants if v["estimator"] != "exact"]
            exact = [v for v in variants if v["estimator"] == "exact"][:1]
            for group in (cheap, [variants[0], *exact] if exact else []):
                for v, got in zip(group, _try_spawn({**common, "kind": "timing", "variants": group})):
                    timing[variants.index(v)] = timing[variants.index(v)] or got
        elif not args.memory_only:
            timing = _spawn({**common, "kind": "timing", "variants": variants})
        for v, result in zip(variants, timing, strict=True):
            if args.memory and v["variant"] not in ("legacy", "compiled", *OVERRIDES):
                spawn = _try_spawn if image else _spawn
                result.update(spawn({**common, "kind": "memory", "variant": v}))
            rec = {
                "shape": name,
                "estimator": v["estimator"],
                "variant": v["variant"],
                "num_samples": v["num_samples"],
                "chunk_size": v["chunk"],
                "batch": case["batch"],
                "D": _prod(case["spec"]["data_shape"]),
                "d": case["spec"]["latent_dim"],
                "device": args.device,
                "arch": arch if name == "mnist" or image else "tabular",
                "threads": args.threads,
                **result,
            }
            records.append(rec)
            print(_row(rec, records), flush=True)
            if args.json:  # after every case, so an interrupted run keeps what it measured
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(records, indent=2))
    print(f"# total {time.perf_counter() - started:.0f} s")
    print(table(records))
    if args.profile:
        print(_profile_text(records))


def _variant_name(estimator: str, variant: str, k: int) -> str:
    if estimator == "hutchinson":
        return f"{'reference' if variant == 'reference' else 'hutchinson'}-k{k}"
    return "exact-chunked" if variant == "chunked" else estimator


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _row(r: dict[str, Any], records: list[dict[str, Any]]) -> str:
    ratio = r.get("x_ts", float("nan"))
    old = r.get("x_legacy", float("nan"))
    peak = r.get("peak_mb", float("nan"))
    mv = f"{r['matvecs']:.1f}" if "matvecs" in r else "-"
    err = (
        f"{r['grad_err_ours']:.3f}/{r['grad_err_ref']:.3f} {r['grad_err_ours_solve']:.3f}/"
        f"{r['grad_err_ref_solve']:.3f}"
        if "grad_err_ours" in r
        else "-"
    )
    variant = (
        f"chunk {r['chunk_size']}" if r["variant"] == "chunked" and r.get("chunk_size") else r["variant"]
    )
    return (
        f"| {r['shape']:<16} | {r['estimator']:<10} | {variant:<9} | {r['num_samples']:>1} | "
        f"{r['batch']:>4} | {r.get('step_s', float('nan')) * 1000:>9.1f} | {ratio:>6.2f} | {old:>6.2f} | "
        f"{peak:>8.0f} | "
        f"{mv:>6} | {err:<25} |"
    )


def table(records: list[dict[str, Any]]) -> str:
    """Markdown table; ``× TS`` is the step time over the same shape's two-step step, ``× old``
    over the ``legacy`` row's (the two-step step as of 2026-11-30, run in the same rounds)."""
    head = (
        "| shape            | estimator  | variant   | K |    B |   step ms |   × TS |  × old |  peak MB | "
        "matvec | grad err ours/ref, solve  |\n"
        "|------------------|------------|-----------|---|------|-----------|--------|--------|----------|"
        "--------|---------------------------|"
    )
    return "\n".join([head, *(_row(r, records) for r in records)])


if __name__ == "__main__":
    main()
