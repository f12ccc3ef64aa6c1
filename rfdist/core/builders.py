"""Build a :class:`~rfdist.core.model.RectangularFlow` from a plain, serialisable description.

A :class:`ModelSpec` is what configs, checkpoints and logged models store, so a model can be
rebuilt from ``asdict(spec)`` and a ``state_dict`` alone (no pickled code).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from rfdist.core.density import LatentDensity
from rfdist.core.flows import MultiScaleFlow, vector_flow
from rfdist.core.model import RectangularFlow

__all__ = ["ModelSpec", "build_model"]


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
        density, density_layers, density_hidden: the low-dimensional flow (``nsf`` | ``maf``).
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
    density: Literal["nsf", "maf"] = "nsf"
    density_layers: int = 5
    density_hidden: tuple[int, ...] = (32, 32)
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
        data = dict(data)
        for key in ("data_shape", "flow_hidden", "density_hidden"):
            if key in data:
                data[key] = tuple(int(v) for v in data[key])
        return cls(**data)


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
            spec.latent_dim, layers=spec.density_layers, hidden=spec.density_hidden, kind=spec.density
        )
        return RectangularFlow(flow, density, data_shape=spec.data_shape)
