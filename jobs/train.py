"""Ray job entry point: ``ray job submit -- python jobs/train.py CONFIG [--set key=value …]``.

The same run as ``rfdist train``; inside a Ray job, ``RAY_ADDRESS`` points at the cluster.
``rfdist submit`` may pass ``@inline:NAME`` for a config that is not in the uploaded project
(see :func:`rfdist.recipes.submit.job_argv`).
"""

from rfdist.cli.main import app
from rfdist.recipes.submit import job_argv

if __name__ == "__main__":
    import sys

    app(["train", *job_argv(sys.argv[1:])])
