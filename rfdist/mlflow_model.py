"""The pyfunc class path that models logged by earlier rfdist versions name — kept for good.

An MLflow model's ``python_model.pkl`` refers to ``rfdist.mlflow_model.RectangularFlowPyfunc``
by name; the class now lives in :mod:`rfdist.tracking.pyfunc`. No warning: a user loading an
old model has nothing to change.
"""

from rfdist.tracking.pyfunc import *  # noqa: F403
from rfdist.tracking.pyfunc import RectangularFlowPyfunc, __all__  # noqa: F401
