"""The standardising layer in front of the latent density (``model.density_norm``)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rfdist.core.density import LatentDensity
from rfdist.core.latent_norm import RUNNING_MOMENTUM, LatentNorm


def _trained_once(norm: str, u: torch.Tensor, **kw) -> LatentDensity:
    density = LatentDensity(u.shape[1], layers=2, hidden=(8,), norm=norm, **kw).double()
    density.train()
    density.log_prob(u)  # a training forward: the statistics are taken here
    return density.eval()


@pytest.mark.parametrize("norm", ["actnorm", "running"])
def test_first_training_batch_is_standardised(norm: str) -> None:
    u = 80 + 30 * torch.randn(400, 3, dtype=torch.float64)
    density = _trained_once(norm, u)
    z, ladj = density.norm(u)
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(z.std(0, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(ladj, -u.std(0, correction=0).log().sum().expand(400))


@pytest.mark.parametrize("norm", ["actnorm", "running"])
def test_normalised_density_integrates_to_one_at_a_far_scale(norm: str) -> None:
    """d = 1, latents at mean 200 and scale 80: ∫ p(u) du = 1 by quadrature (the log-Jacobian's
    sign and size), and the mass sits where the latents are (not at the flow's ±5)."""
    torch.manual_seed(0)
    u = 200 + 80 * torch.randn(2000, 1, dtype=torch.float64)
    density = _trained_once(norm, u)
    with torch.no_grad():
        for p in density.flow.parameters():
            p.add_(0.2 * torch.randn_like(p))  # away from the flow's near-identity start
        grid = torch.linspace(-1500, 1900, 200_001, dtype=torch.float64).unsqueeze(1)
        p = density.log_prob(grid).exp()
    dx = grid[1, 0] - grid[0, 0]
    assert abs(float(p.sum() * dx) - 1) < 1e-4
    inside = (grid[:, 0] - 200).abs() < 5 * 80
    assert float(p[inside].sum() * dx) > 0.99


def test_actnorm_learns_after_its_initialisation_and_running_tracks_the_latents() -> None:
    torch.manual_seed(0)
    actnorm = LatentNorm(2, kind="actnorm").double().train()
    running = LatentNorm(2, kind="running").double().train()
    assert isinstance(actnorm.log_scale, torch.nn.Parameter) and "log_scale" in dict(running.named_buffers())
    batches = [s * torch.randn(50, 2, dtype=torch.float64) + s for s in torch.linspace(6, 80, 40).tolist()]
    mean, var = batches[0].mean(0), batches[0].var(0, correction=0)
    for batch in batches:
        actnorm(batch)
        running(batch)
        if batch is not batches[0]:  # the exponential average, written out
            mean = (1 - RUNNING_MOMENTUM) * mean + RUNNING_MOMENTUM * batch.mean(0)
            var = (1 - RUNNING_MOMENTUM) * var + RUNNING_MOMENTUM * batch.var(0, correction=0)
    torch.testing.assert_close(running.shift, mean)
    torch.testing.assert_close(running.log_scale, var.log() / 2)
    # actnorm keeps its first-batch values until an optimizer moves them
    torch.testing.assert_close(actnorm.shift, batches[0].mean(0))
    z, ladj = actnorm(batches[1])
    (z.square().sum() - ladj.sum()).backward()
    assert actnorm.log_scale.grad is not None and actnorm.log_scale.grad.abs().sum() > 0


def test_statistics_are_taken_only_when_training_with_gradients() -> None:
    norm = LatentNorm(2, kind="running").double()
    first = torch.randn(30, 2, dtype=torch.float64) * 4 + 1
    norm.train()
    norm(first)
    before = norm.state_dict()
    other = torch.randn(30, 2, dtype=torch.float64) * 50
    with torch.no_grad():
        norm(other)  # e.g. a metric under no_grad in training mode
    norm.eval()
    norm(other)
    for key, value in norm.state_dict().items():
        torch.testing.assert_close(value, before[key])


@pytest.mark.parametrize("norm", ["actnorm", "running"])
def test_inverse_and_samples_follow_the_density(norm: str) -> None:
    """Samples are the normalised density's: their histogram (d = 1, latents at -30 ± 12) matches
    the density integrated over each bin."""
    torch.manual_seed(1)
    u = -30 + 12 * torch.randn(3000, 1, dtype=torch.float64)
    density = _trained_once(norm, u)
    with torch.no_grad():
        for p in density.flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    z, _ = density.norm(u)
    torch.testing.assert_close(density.norm.inverse(z), u)
    samples = density.sample(40_000)
    assert samples.requires_grad
    edges = torch.linspace(-90, 30, 25, dtype=torch.float64)
    counts = torch.histc(samples.detach()[:, 0], bins=24, min=-90, max=30) / 40_000
    with torch.no_grad():
        fine = torch.linspace(-90, 30, 24 * 400 + 1, dtype=torch.float64)
        mass = density.log_prob(fine.unsqueeze(1)).exp()
        per_bin = torch.stack(
            [
                torch.trapezoid(mass[i * 400 : (i + 1) * 400 + 1], fine[i * 400 : (i + 1) * 400 + 1])
                for i in range(24)
            ]
        )
    assert float(per_bin.sum()) > 0.98 and float(edges[0]) == -90
    assert (counts - per_bin).abs().max() < 0.01


@pytest.mark.parametrize("norm", ["actnorm", "running"])
def test_through_the_config_and_a_checkpoint(tmp_path, norm: str) -> None:
    """``model.density_norm`` reaches the model; a checkpoint rebuilds the same density, and a
    loaded actnorm does not initialise again on its next training batch."""
    from rfdist import ModelSpec, build_model
    from rfdist.config import ModelConfig
    from rfdist.runtime.checkpoint import TrainingState, load_state, save_state

    cfg = ModelConfig(latent_dim=2, density_norm=norm, flow_hidden=[8])
    spec = cfg.spec((4,), seed=0)
    model = build_model(spec).train()
    model.density.log_prob(5 + 20 * torch.randn(64, 2))
    state = TrainingState(
        model=model.state_dict(), optimizer=None, scheduler=None, step=1, rng=None,
        config={"model": cfg.model_dump()}, spec=spec.to_dict(), metrics={},
    )  # fmt: skip
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    again = build_model(ModelSpec.from_dict(loaded.spec))
    again.load_state_dict(loaded.model)
    x = torch.randn(4, 4)
    torch.testing.assert_close(again.eval().log_prob(x), model.eval().log_prob(x))
    if norm == "actnorm":
        shift = again.density.norm.shift.detach().clone()
        again.train().density.log_prob(torch.randn(64, 2))
        torch.testing.assert_close(again.density.norm.shift.detach(), shift)
    assert build_model(ModelConfig(latent_dim=2).spec((4,), seed=0)).density.norm is None  # default: none


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_statistics(rank: int, port: int, u: torch.Tensor, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        norm = LatentNorm(u.shape[1], kind="actnorm").double().train()
        norm(u[rank::2])
        out[rank] = (norm.shift.detach().clone(), norm.log_scale.detach().clone())
    finally:
        dist.destroy_process_group()


def test_data_parallel_ranks_share_the_statistics_of_all_their_rows() -> None:
    """Two gloo ranks, each with half the batch: both hold the whole batch's statistics."""
    u = torch.randn(100, 3, dtype=torch.float64) * torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_statistics, args=(_free_port(), u, out), nprocs=2, join=True)
        results = dict(out)
    for shift, log_scale in results.values():
        torch.testing.assert_close(shift, u.mean(0))
        torch.testing.assert_close(log_scale, u.std(0, correction=0).log())


def test_evaluation_reports_the_latents_scale_against_the_density_range() -> None:
    """``rfdist eval``'s latent_rms / latent_rms_flow / latent_beyond_range, by hand from the
    encodings and the norm layer's stored shift and scale (set so that part of the flow's
    input lies beyond the splines' ±5)."""
    from rfdist import ModelSpec, build_model
    from rfdist.recipes.evaluate import EvalOptions, evaluate_model, load_eval_data

    torch.manual_seed(0)
    model = build_model(ModelSpec(data_shape=(3,), latent_dim=2, flow_hidden=(8,), density_norm="running"))
    data = load_eval_data("synthetic:sphere", test_rows=300)
    with torch.no_grad():
        model.density.norm.shift.fill_(0.2)
        model.density.norm.log_scale.fill_(-2.0)
    options = EvalOptions(data="synthetic:sphere", fd_samples=0, plots=False, progress=False)
    metrics = evaluate_model(model, data, options).metrics
    with torch.no_grad():
        u = model.eval().encode(data.test)
    z = (u - 0.2) / torch.exp(torch.tensor(-2.0))
    assert metrics["latent_rms"] == pytest.approx(float(u.pow(2).mean(0).sqrt().median()), rel=1e-5)
    assert metrics["latent_rms_flow"] == pytest.approx(float(z.pow(2).mean(0).sqrt().median()), rel=1e-5)
    assert metrics["latent_beyond_range"] == pytest.approx(float((z.abs() > 5).double().mean()))
    assert 0 < metrics["latent_beyond_range"] < 1
    assert metrics["latent_rms"] != pytest.approx(metrics["latent_rms_flow"])
