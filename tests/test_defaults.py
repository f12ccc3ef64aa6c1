"""The library and ``rfdist train`` use the same estimator settings, whoever builds them.

``rfdist train``'s worker builds its options with ``cfg.loss_options()`` and runs
``train_step`` on them; a library user calls ``RectangularFlow.loss``, ``fit`` or
``logdet_surrogate`` with their defaults. Both paths are run here with the solver and the
preconditioner spied on, and what reached them is compared field by field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

import rfdist.core.model as model_module
import rfdist.core.volume as volume_module
from rfdist.config import EstimatorConfig, load_config
from rfdist.core.builders import ModelSpec, build_model
from rfdist.core.engine import LossOptions, fit, make_optimizer, train_step
from rfdist.core.options import DEFAULTS, EstimatorOptions
from rfdist.core.volume import logdet_surrogate

D, LATENT, BATCH = 8, 6, 4  # d-aware rules bind here: 2 Gram rows, rebuilt every 8 steps, 4 CG iterations
LIBRARY_ONLY = {"max_jitter_tries", "precond_ridge"}  # settings the run config does not expose
LOSS_ONLY = {"mode", "beta", "likelihood_weight"}


def test_config_schema_defaults_are_the_records() -> None:
    schema = EstimatorConfig.model_fields
    assert set(schema) == EstimatorOptions.field_names() - LIBRARY_ONLY
    for name, field in schema.items():
        assert field.default == getattr(DEFAULTS, name), name
    assert EstimatorConfig().options() == DEFAULTS


def test_loss_options_defaults_are_the_records() -> None:
    names = {f.name for f in dataclasses.fields(LossOptions)}
    assert names - LOSS_ONLY == (EstimatorOptions.field_names() - {"name"}) | {"estimator"}
    assert LossOptions().estimator_options() == DEFAULTS
    for name, value in DEFAULTS.as_dict().items():
        assert getattr(LossOptions(), "estimator" if name == "name" else name) == value, name


class Spy:
    """Records what reaches the volume estimators, the CG solver and the Gram preconditioner."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = {"surrogate": [], "exact": [], "cg": [], "gram": []}
        for module, name, key in [
            (model_module, "logdet_surrogate", "surrogate"),
            (model_module, "logdet_exact", "exact"),
            (volume_module, "conjugate_gradient", "cg"),
            (volume_module, "gram_inverse", "gram"),
        ]:
            monkeypatch.setattr(module, name, self.wrap(getattr(module, name), key))

    def wrap(self, fn, key: str):
        def spied(*args, **kwargs):
            self.calls[key].append(self.describe(key, args, kwargs))
            return fn(*args, **kwargs)

        return spied

    @staticmethod
    def describe(key: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        if key == "surrogate":  # the record, with its d-aware settings resolved for this batch
            options = args[2] if len(args) > 2 else kwargs.get("options") or DEFAULTS
            return options.resolved(LATENT, BATCH).as_dict()
        if key == "cg":
            cg = {k: kwargs[k] for k in ("tol", "max_iters", "check_every")}
            return {**cg, "preconditioned": kwargs["preconditioner"] is not None}
        if key == "gram":
            return {k: kwargs[k] for k in ("rows", "ridge")}
        return {k: kwargs[k] for k in ("chunk_size", "max_jitter_tries")}

    def run(self, call) -> dict[str, Any]:
        for calls in self.calls.values():
            calls.clear()
        call()
        return {key: calls[:1] for key, calls in self.calls.items() if calls}


def _model() -> torch.nn.Module:
    return build_model(ModelSpec(data_shape=(D,), latent_dim=LATENT, flow_layers=2, flow_hidden=(8,)))


def _worker_options(name: str) -> LossOptions:
    """What ``rfdist train``'s worker passes to ``train_step``: built-in defaults, no estimator keys
    but the name (two workers, so the per-worker batch is ``BATCH``)."""
    overrides = [f"model.latent_dim={LATENT}", f"train.batch_size={2 * BATCH}", "scaling.num_workers=2"]
    return load_config(None, [*overrides, f"estimator.name={name}"]).loss_options()


@pytest.mark.parametrize("name", ["hutchinson", "exact"])
def test_library_and_rfdist_train_use_the_same_estimator(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spy, x = Spy(monkeypatch), torch.randn(BATCH, D)
    models = {where: _model() for where in ("worker", "loss", "fit", "logdet_surrogate")}
    optimizer = make_optimizer(models["worker"].parameters(), 1e-3)
    worker = spy.run(lambda: train_step(models["worker"], optimizer, x, _worker_options(name)))
    assert worker[name if name == "exact" else "surrogate"], "the spy saw nothing"
    library = {
        "loss": spy.run(lambda: models["loss"].loss(x, estimator=name)),
        "fit": spy.run(
            lambda: fit(models["fit"], x, steps=1, batch_size=BATCH, options=LossOptions(estimator=name))
        ),
    }
    if name == "hutchinson":
        u = models["logdet_surrogate"].encode(x)
        library["logdet_surrogate"] = spy.run(
            lambda: logdet_surrogate(models["logdet_surrogate"].decode_flat, u)
        )
        for where in ("worker", "loss", "fit"):  # the Gram preconditioner's rebuild period
            every = models[where].__dict__["_gram_cache_state"].every
            (worker if where == "worker" else library[where])["gram_every"] = every
    for where, seen in library.items():
        for key, value in worker.items():
            if key in seen:
                assert seen[key] == value, f"{where}: {key} differs from rfdist train's"
            else:
                assert where == "logdet_surrogate" and key in ("surrogate", "exact", "gram_every"), (
                    where,
                    key,
                )


def test_fit_defaults_to_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    import rfdist.core.engine as engine

    seen: list[LossOptions] = []
    step = engine.train_step
    monkeypatch.setattr(
        engine,
        "train_step",
        lambda m, o, x, options, **kw: seen.append(options) or step(m, o, x, options, **kw),
    )
    fit(_model(), torch.randn(BATCH, D), steps=1, batch_size=BATCH)
    assert (
        seen[0].estimator_options()
        == DEFAULTS
        == _worker_options(DEFAULTS.name)
        .estimator_options()
        .updated(cg_max_iters=None, precond_rows=None, precond_every=None)
    )
