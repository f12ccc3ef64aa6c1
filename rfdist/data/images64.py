"""64×64 RGB sources for ``rfdist data make``: ``shapes64`` (a synthetic manifold) and ``patches64``.

``shapes64`` renders an anti-aliased, coloured kite on a dark background. Five continuous
factors are drawn uniformly — centre ``x``, ``y`` (pixels), ``scale``, ``rotation`` (radians,
within ±π/3 so the asymmetric kite's angle is identifiable) and ``hue`` (red → blue) — so the
images lie on a smooth 5-dimensional manifold in R^12288. Pixel coverage is a clipped linear
function of the signed distance to the kite's edges (one pixel wide), which is smooth in the
factors. The factors are stored as extra columns ``factor_*`` and ``intrinsic_dim`` goes into
the manifest. Rendering is vectorised over a chunk of images and all pixels (no per-pixel
Python): 100k rows take about a minute on one core.

``patches64`` crops random 64×64 windows from photographs that installed packages ship:
scikit-learn's ``load_sample_images`` (china, flower) and matplotlib's ``grace_hopper.jpg``.
Every photograph is cut into three vertical bands — the left 70 % for ``train``, the next 15 %
for ``val``, the rest for ``test`` — so no pixel is shared between splits. ``label`` is the
photograph's index; ``crop_top`` / ``crop_left`` say where each crop came from.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rfdist.data.errors import DataError

__all__ = ["FACTORS", "INTRINSIC_DIM", "make_patches64", "make_shapes64", "render_shapes"]

SIZE = 64
FACTORS = ("x", "y", "scale", "rotation", "hue")
INTRINSIC_DIM = len(FACTORS)
RANGES = {  # uniform ranges of the factors
    "x": (20.0, 44.0),
    "y": (20.0, 44.0),
    "scale": (10.0, 18.0),  # kite half-height in pixels
    "rotation": (-np.pi / 3, np.pi / 3),
    "hue": (0.0, 2.0 / 3.0),
}
# a convex, top-bottom asymmetric kite in units of its half-height, the origin inside it
KITE = np.array([[0.0, -1.0], [-0.6, 0.15], [0.0, 0.55], [0.6, 0.15]], dtype=np.float32)
BACKGROUND = 24.0


def _hsv_to_rgb(hue: np.ndarray, sat: float = 0.85, val: float = 0.95) -> np.ndarray:
    """Vectorised HSV → RGB in [0, 1] for hues in [0, 1): ``(N,)`` → ``(N, 3)``."""
    k = (np.array([5.0, 3.0, 1.0])[None, :] + hue[:, None] * 6.0) % 6.0
    return val - val * sat * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def render_shapes(factors: np.ndarray) -> np.ndarray:
    """uint8 images ``(N, 3, 64, 64)`` of the kite with ``factors`` ``(N, 5)`` in :data:`FACTORS` order."""
    f = np.asarray(factors, dtype=np.float32)
    cx, cy, scale, rot = (f[:, i, None, None] for i in range(4))
    coords = np.arange(SIZE, dtype=np.float32) + 0.5
    px, py = coords[None, None, :] - cx, coords[None, :, None] - cy  # (N, 1, W), (N, H, 1)
    cos, sin = np.cos(rot), np.sin(rot)
    # pixel offsets in the kite's frame (rotate by −rotation), in pixels
    u = cos * px + sin * py
    v = -sin * px + cos * py
    sdf = np.full((len(f), SIZE, SIZE), -np.inf, dtype=np.float32)
    for a, b in zip(KITE, np.roll(KITE, -1, axis=0), strict=True):
        edge = b - a
        normal = np.array([edge[1], -edge[0]], dtype=np.float32) / np.linalg.norm(edge)
        offset = float(normal @ a)
        if offset < 0:  # point the normal away from the kite's centre (the origin, inside it)
            normal, offset = -normal, -offset
        # signed distance (pixels) to this edge's line: positive outside
        sdf = np.maximum(sdf, normal[0] * u + normal[1] * v - offset * scale)
    coverage = np.clip(0.5 - sdf, 0.0, 1.0)[:, None]  # (N, 1, H, W), one-pixel anti-aliasing ramp
    colour = (255.0 * _hsv_to_rgb(f[:, 4]))[:, :, None, None].astype(np.float32)  # (N, 3, 1, 1)
    image = BACKGROUND + coverage * (colour - BACKGROUND)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _draw_factors(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.uniform(*RANGES[name], size=n) for name in FACTORS], axis=1).astype(np.float32)


def _split_sizes(rows: int | None, val_rows: int | None = None) -> list[tuple[str, int]]:
    """Train ``rows`` (default 20,000); val (validated exactly at every checkpoint: d tangents a
    row) ``val_rows``, default up to 200 rows; test up to 2,000."""
    rows = rows or 20_000
    val = val_rows or max(min(rows // 10, 200), 1)
    return [("train", rows), ("val", val), ("test", max(min(rows // 10, 2000), 1))]


def make_shapes64(
    rows: int | None, seed: int, val_rows: int | None = None, chunk: int = 1024
) -> tuple[dict, dict]:
    """Splits (uint8 ``x``, factor columns) and the manifest extras of ``shapes64``."""
    splits = {}
    for offset, (split, n) in enumerate(_split_sizes(rows, val_rows)):
        rng = np.random.default_rng([seed, offset])
        factors = _draw_factors(n, rng)
        x = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
        for start in range(0, n, chunk):
            x[start : start + chunk] = render_shapes(factors[start : start + chunk])
        columns = {f"factor_{name}": factors[:, i] for i, name in enumerate(FACTORS)}
        splits[split] = {"x": x, "label": None, "columns": columns}
    extra = {
        "intrinsic_dim": INTRINSIC_DIM,
        "factors": [f"factor_{name}" for name in FACTORS],
        "factor_ranges": {f"factor_{k}": [float(a), float(b)] for k, (a, b) in RANGES.items()},
    }
    return splits, extra


def _photographs() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 HxWx3) of the photographs shipped by installed packages."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    photos = [(Path(p).stem, np.asarray(img)) for p, img in zip(bunch.filenames, bunch.images, strict=True)]
    try:
        import matplotlib

        path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
        if os.path.isfile(path):
            with Image.open(path) as img:
                photos.append(("grace_hopper", np.asarray(img.convert("RGB"))))
    except ImportError:  # optional: matplotlib's sample photograph
        pass
    if not photos:
        raise DataError("patches64: no photographs found (scikit-learn's sample images are missing)")
    return photos


BANDS = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0)}


def make_patches64(rows: int | None, seed: int, val_rows: int | None = None) -> tuple[dict, dict]:
    """Random 64×64 crops; each split from its own vertical band of every photograph."""
    photos = _photographs()
    splits = {}
    for offset, (split, n) in enumerate(_split_sizes(rows, val_rows)):
        rng = np.random.default_rng([seed, 100 + offset])
        which = rng.integers(0, len(photos), size=n)
        x = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
        corner = np.zeros((n, 2), dtype=np.int64)
        for index, (_, photo) in enumerate(photos):
            height, width, _ = photo.shape
            lo, hi = (round(b * width) for b in BANDS[split])
            if hi - lo < SIZE or height < SIZE:
                raise DataError(f"patches64: photograph {index} is too small for 64x64 crops in {split}")
            rows_here = np.flatnonzero(which == index)
            top = rng.integers(0, height - SIZE + 1, size=len(rows_here))
            left = rng.integers(lo, hi - SIZE + 1, size=len(rows_here))
            # gather all crops at once: (n, 64, 64, 3) via broadcast index arrays
            r = top[:, None, None] + np.arange(SIZE)[None, :, None]
            c = left[:, None, None] + np.arange(SIZE)[None, None, :]
            x[rows_here] = photo[r, c].transpose(0, 3, 1, 2)
            corner[rows_here] = np.stack([top, left], axis=1)
        columns = {"crop_top": corner[:, 0], "crop_left": corner[:, 1]}
        splits[split] = {"x": x, "label": which.astype(np.int64), "columns": columns}
    extra = {"photographs": [name for name, _ in photos], "bands": BANDS}
    return splits, extra
