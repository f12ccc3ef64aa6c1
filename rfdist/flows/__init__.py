"""Bijective layers: the contract, vector couplings (on zuko) and multi-scale image flows."""

from .base import ActNorm, Bijection, Chain, Permutation
from .coupling import AffineCoupling, SplineCoupling, vector_flow
from .image import ImageAffineCoupling, MultiScaleFlow, ResNetCoupler

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
