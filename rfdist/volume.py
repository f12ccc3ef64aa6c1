"""The volume-change term of a rectangular flow — public alias of :mod:`rfdist.core.volume`.

Kept at this path for good: ``rfdist.volume.logdet_exact``, ``logdet_surrogate`` and
``conjugate_gradient`` are the documented entry points.
"""

from rfdist.core.volume import *  # noqa: F403
from rfdist.core.volume import __all__  # noqa: F401
