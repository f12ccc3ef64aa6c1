"""Bijective layers: the contract, vector couplings (on zuko) and multi-scale image flows."""

from rfdist.core.flows.base import ActNorm, Bijection, Chain, Permutation
from rfdist.core.flows.coupling import AffineCoupling, SplineCoupling, vector_flow
from rfdist.core.flows.image import ImageAffineCoupling, MultiScaleFlow, ResNetCoupler

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "Bijection",
    "Chain",
    "ImageAffineCoupling",
    "MultiScaleFlow",
    "Permutation",
    "ResNetCoupler",
    "SplineCoupling",
    "vector_flow",
]
