"""The estimator sweep presets validate and sweep knobs that change the work done."""

from __future__ import annotations

from pathlib import Path

import pytest

from rfdist.config import load_config
from rfdist.recipes.sweep import search_space, trial_config

ROOT = Path(__file__).resolve().parents[1]


def _work(opts, d: int) -> tuple:
    """What a step computes: two grid points with the same key do the same work."""
    if opts.estimator == "exact":
        return ("exact",)
    budget = 1 if d == 1 else opts.cg_max_iters  # one unknown: CG's first step is exact
    # a tolerance only matters when the solver can stop early: a budget past one check
    tol = opts.cg_tol if opts.check_every and budget > opts.check_every else None
    return ("hutchinson", opts.num_samples, budget, opts.preconditioner if d > 1 else None, tol)


@pytest.mark.parametrize("preset", ["sweep-von-mises.yaml", "sweep-miniboone-shape.yaml"])
def test_estimator_sweep_presets_load_and_every_point_does_different_work(preset: str) -> None:
    cfg = load_config(ROOT / "rfdist" / "presets" / preset, [])
    assert search_space(cfg)  # the same validation `rfdist sweep` runs before Ray starts
    base = cfg.model_dump()
    points = cfg.tune.space["estimator"]
    keys = []
    for i, point in enumerate(points):
        trial = trial_config(base, {"estimator": point}, f"t{i}")
        keys.append(_work(trial.loss_options(), trial.model.latent_dim))
    assert len(set(keys)) == len(keys), keys
