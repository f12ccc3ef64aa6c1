"""Build a :class:`~rfdist.core.model.RectangularFlow` from a plain, serialisable description.

A :class:`ModelSpec` is what configs, checkpoints and logged models store, so a model can be
rebuilt from ``asdict(spec)`` and a ``state_dict`` alone (no pickled code).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch

from rfdist.core.density import LatentDensity
from rfdist.core.flows import MultiScaleFlow, vector_flow
from rfdist.core.model import RectangularFlow

__all__ = ["SPEC_LIMITS", "ModelSpec", "build_model"]

SPEC_LIMITS: dict[str, int] = {
    "data_dim": 1 << 20,  # D: 3x512x512 images fit
    "latent_dim": 1 << 20,
    "flow_layers": 256,
    "flow_hidden": 1 << 14,  # each hidden width (and at most 64 hidden layers)
    "bins": 1024,
    "scales": 16,
    "couplings": 64,
    "conv_hidden": 4096,
    "conv_blocks": 128,
    "density_layers": 256,
    "density_hidden": 1 << 14,
}
"""Upper bounds a :class:`ModelSpec` is checked against before anything is allocated: a spec
read from a file (a logged model's ``spec.json``) must not make the loader build a huge model."""
MAX_HIDDEN_LAYERS = 64


@dataclass
class ModelSpec:
    """Architecture of a rectangular flow.

    Attributes:
        data_shape: one row's shape, ``(D,)`` or ``(C, H, W)``.
        latent_dim: manifold dimension ``d`` (``1 <= d < D``).
        flow: ``coupling`` (vectors) or ``multiscale`` (images).
        coupling: ``affine`` or ``spline`` couplings (vector flows).
        flow_layers, flow_hidden, activation, actnorm, permute, bins, bound: vector-flow options.
        scales, couplings, conv_hidden, conv_blocks: multi-scale image-flow options.
        density, density_layers, density_hidden: the low-dimensional flow (``nsf`` | ``maf`` |
            ``realnvp``, the paper's: affine couplings, ``d >= 2``).
        density_norm: a standardising layer in front of it (``none`` | ``actnorm`` | ``running``;
            :mod:`rfdist.core.latent_norm`).
        seed: initialisation seed (parameters and fixed permutations).
    """

    data_shape: tuple[int, ...]
    latent_dim: int
    flow: Literal["coupling", "multiscale"] = "coupling"
    coupling: Literal["affine", "spline"] = "affine"
    flow_layers: int = 5
    flow_hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    actnorm: bool = False
    permute: bool = False
    bins: int = 8
    bound: float = 5.0
    scales: int = 2
    couplings: int = 3
    conv_hidden: int = 64
    conv_blocks: int = 8
    density: Literal["nsf", "maf", "realnvp"] = "nsf"
    density_layers: int = 5
    density_hidden: tuple[int, ...] = (32, 32)
    density_norm: Literal["none", "actnorm", "running"] = "none"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dim(self) -> int:
        return math.prod(self.data_shape)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["data_shape"] = list(self.data_shape)
        out["flow_hidden"] = list(self.flow_hidden)
        out["density_hidden"] = list(self.density_hidden)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """A spec from its dict; unknown keys, wrong types and values over :data:`SPEC_LIMITS` are a
        ``ValueError`` naming the key (checked before any tensor is allocated)."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object of model settings, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (known keys: {', '.join(sorted(known))})")
        data = dict(data)
        for key in ("data_shape", "flow_hidden", "density_hidden"):
            if key in data:
                data[key] = tuple(_count(key, v) for v in _sequence(key, data[key]))
        spec = cls(**data)
        spec.check_limits()
        return spec

    def check_limits(self) -> None:
        """``ValueError`` naming the first setting outside :data:`SPEC_LIMITS` (or not a whole number)."""
        values: dict[str, Any] = {
            key: getattr(self, key)
            for key in SPEC_LIMITS
            if key not in ("data_dim", "flow_hidden", "density_hidden")
        }
        for key, value in values.items():
            _count(key, value)
        values["data_dim"] = math.prod(_count("data_shape", v) for v in self.data_shape)
        for key in ("flow_hidden", "density_hidden"):
            widths = getattr(self, key)
            if len(widths) > MAX_HIDDEN_LAYERS:
                raise ValueError(f"{key}: at most {MAX_HIDDEN_LAYERS} hidden layers, got {len(widths)}")
            values[key] = max(widths, default=0)
        for key, value in values.items():
            if value > SPEC_LIMITS[key]:
                raise ValueError(f"{key}: {value} is over the limit of {SPEC_LIMITS[key]}")


def _count(key: str, value: Any) -> int:
    """A whole number >= 0 for ``key`` (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{key}: expected a whole number >= 0, got {value!r}")
    return int(value)


def _sequence(key: str, value: Any) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{key}: expected a list of whole numbers, got {value!r}")
    if len(value) > MAX_HIDDEN_LAYERS:
        raise ValueError(f"{key}: at most {MAX_HIDDEN_LAYERS} entries, got {len(value)}")
    return list(value)


def build_model(spec: ModelSpec) -> RectangularFlow:
    """A freshly initialised model for ``spec`` (deterministic given ``spec.seed``).

    Example:
        >>> model = build_model(ModelSpec(data_shape=(2,), latent_dim=1, flow_hidden=(8,)))
        >>> model.sample(3).shape
        torch.Size([3, 2])
    """
    if not 1 <= spec.latent_dim < spec.data_dim:
        raise ValueError(f"latent_dim must satisfy 1 <= d < D={spec.data_dim}, got {spec.latent_dim}")
    devices = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(spec.seed)
        if spec.flow == "coupling":
            if len(spec.data_shape) != 1:
                raise ValueError(f"a coupling flow needs vector data (D,), got shape {spec.data_shape}")
            flow = vector_flow(
                spec.data_dim,
                layers=spec.flow_layers,
                hidden=spec.flow_hidden,
                coupling=spec.coupling,
                activation=spec.activation,
                actnorm=spec.actnorm,
                permute=spec.permute,
                bins=spec.bins,
                bound=spec.bound,
                seed=spec.seed,
            )
        elif spec.flow == "multiscale":
            if len(spec.data_shape) != 3:
                raise ValueError(f"a multiscale flow needs image data (C, H, W), got {spec.data_shape}")
            flow = MultiScaleFlow(
                spec.data_shape,  # type: ignore[arg-type]
                scales=spec.scales,
                couplings=spec.couplings,
                hidden=spec.conv_hidden,
                blocks=spec.conv_blocks,
            )
        else:
            raise ValueError(f"flow must be 'coupling' or 'multiscale', got {spec.flow!r}")
        density = LatentDensity(
            spec.latent_dim, layers=spec.density_layers, hidden=spec.density_hidden, kind=spec.density,
            norm=spec.density_norm,
        )
        return RectangularFlow(flow, density, data_shape=spec.data_shape)
