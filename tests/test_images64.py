"""64×64×3 sources (shapes64, patches64) and the multi-scale flow at that size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.core.builders import ModelSpec, build_model
from rfdist.core.engine import LossOptions, train_step
from rfdist.core.volume import logdet_exact
from rfdist.data.images64 import BANDS, FACTORS, _hsv_to_rgb, _photographs, render_shapes


def _pixels(column: pa.ChunkedArray) -> np.ndarray:
    """Rows of column ``x`` as (N, 3, 64, 64), whatever the image layout (uint8 tensor or float list)."""
    column = column.combine_chunks()
    if hasattr(column, "to_numpy_ndarray"):  # arrow.fixed_shape_tensor
        return column.to_numpy_ndarray().reshape(len(column), 3, 64, 64)
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), 3, 64, 64)


def _make(tmp_path: Path, name: str, rows: int) -> tuple[Path, dict]:
    out = tmp_path / name
    runner = CliRunner()
    made = runner.invoke(app, ["data", "make", name, "--out", str(out), "--rows", str(rows)])
    assert made.exit_code == 0, made.output
    checked = runner.invoke(app, ["data", "validate", str(out)])
    assert checked.exit_code == 0, checked.output
    assert "shape=(3, 64, 64)" in checked.output and "D=12288" in checked.output
    return out, json.loads((out / "_MANIFEST.json").read_text())


def _check_pixels(column: pa.ChunkedArray) -> np.ndarray:
    x = _pixels(column)
    if pa.types.is_integer(getattr(column.type, "value_type", column.type)):
        assert column.type.value_type == pa.uint8()
    # float layout: whole pixel values in [0, 255] (what uint8 storage would hold)
    assert x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.rint(x))
    return x.astype(np.uint8)


def test_shapes64_make_validate_factors_and_intrinsic_dim(tmp_path: Path) -> None:
    out, manifest = _make(tmp_path, "shapes64", 40)
    assert manifest["intrinsic_dim"] == len(FACTORS) == 5
    assert manifest["splits"]["train"]["rows"] == 40 and manifest["splits"]["train"]["shape"] == [3, 64, 64]
    table = pq.read_table(out / manifest["splits"]["test"]["files"][0])
    x = _check_pixels(table.column("x"))
    factors = np.stack([table.column(f"factor_{f}").to_numpy() for f in FACTORS], axis=1)
    for i, name in enumerate(FACTORS):  # inside the documented ranges
        low, high = manifest["factor_ranges"][f"factor_{name}"]
        assert (factors[:, i] >= low).all() and (factors[:, i] <= high).all()
    # the stored images are the renders of the stored factors, and the kite's centre pixel
    # (the origin is inside the kite) has the colour the hue factor names
    np.testing.assert_array_equal(x, render_shapes(factors))
    cx, cy = factors[:, 0].astype(int), factors[:, 1].astype(int)
    centre = x[np.arange(len(x)), :, cy, cx].astype(float)
    np.testing.assert_allclose(centre, 255 * _hsv_to_rgb(factors[:, 4].astype(np.float64)), atol=1.0)


def test_shapes64_renders_are_smooth_in_the_factors() -> None:
    """A small factor step moves pixels a little (anti-aliased); a render is not a binary mask."""
    base = np.array([[32.0, 32.0, 14.0, 0.3, 0.2]], dtype=np.float32)
    step = base + np.array([[0.05, 0, 0, 0, 0]], dtype=np.float32)
    a, b = (render_shapes(f).astype(float) for f in (base, step))
    assert 0 < np.abs(a - b).max() <= 0.1 * 255
    assert len(np.unique(a)) > 10  # partial coverage on the edges


def test_patches64_make_validate_and_disjoint_bands(tmp_path: Path) -> None:
    out, manifest = _make(tmp_path, "patches64", 30)
    photos = _photographs()
    for split in ("train", "val", "test"):
        table = pq.read_table(out / manifest["splits"][split]["files"][0])
        x = _check_pixels(table.column("x"))
        label = table.column("label").to_numpy()
        top, left = table.column("crop_top").to_numpy(), table.column("crop_left").to_numpy()
        for i in range(len(x)):
            photo = photos[label[i]][1]
            width = photo.shape[1]
            lo, hi = (round(b * width) for b in BANDS[split])
            assert lo <= left[i] and left[i] + 64 <= hi, (split, i, left[i], lo, hi)
            crop = photo[top[i] : top[i] + 64, left[i] : left[i] + 64].transpose(2, 0, 1)
            np.testing.assert_array_equal(x[i], crop)


TINY = {"scales": 3, "couplings": 1, "conv_hidden": 4, "conv_blocks": 1}


@pytest.mark.parametrize(
    "options",
    [
        LossOptions(mode="two_step"),
        LossOptions(estimator="exact", chunk_size=16),
        LossOptions(estimator="hutchinson", num_samples=1, matvec="vjp", preconditioner="gram"),
        LossOptions(
            estimator="hutchinson", matvec="vjp", preconditioner="gram", precond_rows=1, precond_every=8
        ),
    ],
    ids=["two-step", "exact-chunked", "hutchinson", "hutchinson-reused-gram"],
)
@pytest.mark.slow
def test_tiny_image64_flow_trains_with_each_estimator(options: LossOptions) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(data_shape=(3, 64, 64), latent_dim=64, flow="multiscale", **TINY))
    x = model.sample(4).detach() + 0.1 * torch.randn(4, 3, 64, 64)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        result = train_step(model, optimizer, x, options)
        assert not result.skipped and all(math.isfinite(v) for v in result.metrics.values())
    moved = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert moved > len(before) // 2


@pytest.mark.slow
def test_exact_chunked_logdet_and_gradient_match_brute_force() -> None:
    """Multi-scale flow (3 scales) on a small image: chunked exact == dense J from torch.autograd."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(data_shape=(3, 16, 16), latent_dim=6, flow="multiscale", **TINY)).double()
    with torch.no_grad():
        for p in model.flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(2, 6, dtype=torch.float64)
    params = [p for p in model.flow.parameters() if p.requires_grad]

    def brute() -> torch.Tensor:
        rows = []
        for i in range(len(u)):
            jac = torch.autograd.functional.jacobian(
                lambda v: model.decode_flat(v[None])[0], u[i], create_graph=True
            )
            rows.append(torch.linalg.slogdet(jac.T @ jac)[1])
        return torch.stack(rows)

    expected = brute()
    g_expected = torch.autograd.grad(expected.sum(), params)
    for chunk in (None, 4, 1):
        value = logdet_exact(model.decode_flat, u, chunk_size=chunk)
        torch.testing.assert_close(value, expected)
        grads = torch.autograd.grad(value.sum(), params)
        for got, want in zip(grads, g_expected, strict=True):
            torch.testing.assert_close(got, want)


def _r2_lstsq(a: np.ndarray, fa: np.ndarray, b: np.ndarray, fb: np.ndarray) -> float:
    """Linear-regression R² (uniform over factors) by plain least squares: an independent check."""
    coef, *_ = np.linalg.lstsq(np.c_[a, np.ones(len(a))], fa, rcond=None)
    pred = np.c_[b, np.ones(len(b))] @ coef
    return float(np.mean(1 - ((fb - pred) ** 2).sum(0) / ((fb - fb.mean(0)) ** 2).sum(0)))


def test_factor_r2_credits_a_nonlinear_invertible_code_and_not_noise() -> None:
    from rfdist.eval.metrics import factor_r2

    rng = np.random.default_rng(0)
    f = rng.uniform(-1, 1, size=(1500, 2))
    code = np.c_[np.tanh(2 * f[:, 0]) + f[:, 1] ** 3, f[:, 1], rng.normal(size=(1500, 3))]
    got = factor_r2(code[:1000], f[:1000], code[1000:], f[1000:], names=["a", "b"])
    assert got["factor_r2_linear"] == pytest.approx(_r2_lstsq(code[:1000], f[:1000], code[1000:], f[1000:]))
    assert got["factor_r2_knn_b"] > 0.9 and got["factor_r2_knn_a"] > 0.8  # nonlinear, recovered
    noise = factor_r2(rng.normal(size=(1000, 4)), f[:1000], rng.normal(size=(500, 4)), f[1000:])
    assert noise["factor_r2_linear"] < 0.05 and noise["factor_r2_knn"] < 0.05


def test_evaluate_shapes64_reports_reconstruction_and_factor_r2(tmp_path: Path) -> None:
    """rfdist eval's metrics on shapes64: factor R² from the rows' own factors (aligned with the
    images), equal to an independent least-squares fit on the same encodings."""
    from rfdist.eval.metrics import encode_rows
    from rfdist.recipes.evaluate import EvalOptions, evaluate_model, load_eval_data

    out, _ = _make(tmp_path, "shapes64", 120)
    data = load_eval_data(str(out))
    assert data.factor_names == [f"factor_{f}" for f in FACTORS]
    model = build_model(ModelSpec(data_shape=(3, 64, 64), latent_dim=64, flow="multiscale", **TINY))
    with torch.no_grad():  # off the identity: codes mix neighbourhoods of 64 positions
        for p in model.flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    opts = EvalOptions(data=str(out), fd_samples=0, features="raw", batch_size=8, plots=False, progress=False)
    metrics = evaluate_model(model, data, opts, preprocess="logit").metrics
    assert math.isfinite(metrics["test_reconstruction"]) and metrics["test_reconstruction"] > 0
    assert not any(k.startswith("fd_") for k in metrics)  # --fd-samples 0
    test = pq.read_table(out / "test")
    truth = np.stack([test.column(f"factor_{f}").to_numpy() for f in FACTORS], axis=1)
    train = pq.read_table(out / "train")
    truth_train = np.stack([train.column(f"factor_{f}").to_numpy() for f in FACTORS], axis=1)
    a = encode_rows(
        model, torch.from_numpy(_pixels(train.column("x")).astype(np.float32)), preprocess="logit"
    )
    b = encode_rows(model, torch.from_numpy(_pixels(test.column("x")).astype(np.float32)), preprocess="logit")
    assert b.std(0).max() > 0.1  # the codes see the kite (else any row order scores the same)
    assert metrics["factor_r2_linear"] == pytest.approx(_r2_lstsq(a, truth_train, b, truth), abs=1e-6)
    assert all(f"factor_r2_knn_{f}" in metrics for f in FACTORS)
