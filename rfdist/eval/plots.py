"""Pictures of a trained flow: the learned manifold with its density (2-D/3-D) or a sample grid.

Written with matplotlib's Agg backend to PNG files that runs log to MLflow.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rfdist.core.builders import ModelSpec
from rfdist.core.model import RectangularFlow

__all__ = ["model_image", "pareto_front", "plot_model", "plot_pareto", "pyplot"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (PNG files, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@torch.no_grad()
def plot_model(
    model: RectangularFlow,
    data: torch.Tensor,
    path: str | Path,
    *,
    samples: int = 1000,
    title: str | None = None,
) -> Path:
    """Save a picture of ``model`` next to ``data`` (rows in data space) as a PNG at ``path``.

    - ``D = 2``: data, samples, and the learned curve coloured by its density.
    - ``D = 3``: data and samples in 3-D, samples coloured by log-density.
    - images: grids of samples, data and the data's reconstructions g(g†(x)) (model's scale;
      RGB grids rescaled to [0, 1] by each grid's 1st–99th percentiles).
    """
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dtype = next(model.parameters()).dtype
    data = data[:samples].to(dtype)
    drawn = model.sample(samples)
    if len(model.data_shape) == 1 and model.data_dim == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(data[:, 0], data[:, 1], s=3, alpha=0.3, color="grey", label="data")
        ax.scatter(drawn[:, 0], drawn[:, 1], s=3, alpha=0.3, color="tab:orange", label="samples")
        u = torch.linspace(-4, 4, 800, dtype=dtype).unsqueeze(1)
        curve = model.decode(u)
        density = model.log_prob(curve).exp()
        points = ax.scatter(curve[:, 0], curve[:, 1], c=density, s=4, cmap="viridis", label="manifold")
        fig.colorbar(points, ax=ax, label="density on the manifold")
        ax.set_aspect("equal")
        ax.legend(loc="lower left", markerscale=3)
    elif len(model.data_shape) == 1 and model.data_dim == 3:
        fig = plt.figure(figsize=(10, 5))
        ax = fig.add_subplot(1, 2, 1, projection="3d")
        ax.scatter(data[:, 0], data[:, 1], data[:, 2], s=2, alpha=0.3, color="grey")
        ax.set_title("data")
        ax = fig.add_subplot(1, 2, 2, projection="3d")
        density = model.log_prob(drawn)
        ax.scatter(drawn[:, 0], drawn[:, 1], drawn[:, 2], s=2, c=density, cmap="viridis")
        ax.set_title("samples (colour: log-density)")
    elif len(model.data_shape) == 3:
        count = min(36, samples, len(data))
        rebuilt = model.decode(model.encode(data[:count]))
        panels = (("samples", drawn[:count]), ("data", data[:count]), ("reconstructions", rebuilt))
        fig, axes = plt.subplots(1, 3, figsize=(15, 5))
        for ax, (title, images) in zip(axes, panels, strict=True):
            ax.imshow(_grid(images, model.data_shape), cmap="gray")
            ax.set_title(title)
            ax.axis("off")
    else:  # high-dimensional vectors: first two coordinates
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(data[:, 0], data[:, 1], s=3, alpha=0.3, color="grey", label="data")
        ax.scatter(drawn[:, 0], drawn[:, 1], s=3, alpha=0.3, color="tab:orange", label="samples")
        ax.set_xlabel("x0")
        ax.set_ylabel("x1")
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@torch.no_grad()
def model_image(
    model: RectangularFlow,
    spec: ModelSpec,
    data: torch.Tensor,
    *,
    title: str,
    samples: int = 256,
    seed: int = 0,
):
    """:func:`plot_model` of a CPU copy of ``model`` (built from ``spec``) as a PIL image.

    For the picture logged at every checkpoint: drawn with a forked RNG, so the training model
    and the training RNG stream are untouched (a resumed run must draw what an uninterrupted
    one draws).
    """
    import tempfile

    from PIL import Image

    from rfdist.core.builders import build_model

    copy = build_model(spec)  # forks the RNG itself
    copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(seed)
        path = plot_model(copy, data.detach().cpu(), Path(tmp) / "model.png", samples=samples, title=title)
        with Image.open(path) as image:
            return image.convert("RGB")


def _grid(images: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A square grid ``(side·H, side·W[, C])`` of images; RGB rescaled to [0, 1] for imshow."""
    c, h, w = shape
    side = max(1, int(len(images) ** 0.5))
    grid = images[: side * side].reshape(side, side, c, h, w).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(side * h, side * w, c).squeeze(-1).float()
    if c == 3:
        low, high = torch.quantile(grid.flatten()[::7], torch.tensor([0.01, 0.99]))
        grid = ((grid - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
    return grid


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both lower-is-better).

    >>> pareto_front([(1.0, 5.0), (2.0, 4.0), (3.0, 6.0), (4.0, 1.0)])
    [0, 1, 3]
    """
    front = []
    for i, (cost_i, value_i) in enumerate(points):
        dominated = any(
            cost_j <= cost_i and value_j <= value_i and (cost_j, value_j) != (cost_i, value_i)
            for j, (cost_j, value_j) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def plot_pareto(trials, path: str | Path, *, metric: str = "val/nll") -> Path:
    """Save the sweep's trade-off: validation NLL against seconds per step, Pareto front marked.

    ``trials``: :class:`rfdist.recipes.sweep.TrialSummary` rows. Trials stopped early by the scheduler
    are drawn hollow at their last NLL; each point is labelled with its trial id.
    """
    import math

    plt = pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    usable = [t for t in trials if math.isfinite(t.val_nll) and math.isfinite(t.s_per_step)]
    done = [t for t in usable if t.status == "completed"]
    early = [t for t in usable if t.status != "completed"]
    if done:
        ax.scatter([t.s_per_step for t in done], [t.val_nll for t in done], label="completed", color="C0")
    if early:
        ax.scatter(
            [t.s_per_step for t in early],
            [t.val_nll for t in early],
            label="stopped early",
            facecolors="none",
            edgecolors="C1",
        )
    front = [done[i] for i in pareto_front([(t.s_per_step, t.val_nll) for t in done])]
    front.sort(key=lambda t: t.s_per_step)
    if front:
        ax.plot(
            [t.s_per_step for t in front], [t.val_nll for t in front], "--", color="C2", label="Pareto front"
        )
    for t in usable:
        ax.annotate(
            t.trial[-5:], (t.s_per_step, t.val_nll), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xlabel("seconds per training step")
    ax.set_ylabel("validation NLL (exact)")
    ax.set_title(f"Sweep trade-off ({metric})")
    if usable:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
