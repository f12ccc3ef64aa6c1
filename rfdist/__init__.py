"""rfdist: rectangular (injective) normalizing flows, trained at scale.

The math (:mod:`rfdist.volume`, :mod:`rfdist.flows`, :mod:`rfdist.model`) is plain PyTorch.
"""

from .builders import ModelSpec, build_model
from .model import RectangularFlow

__all__ = ["ModelSpec", "RectangularFlow", "build_model"]
__version__ = "0.1.0"
