"""Ray job entry point: ``ray job submit -- python jobs/sweep.py CONFIG [--set key=value …]``.

The same sweep as ``rfdist sweep``; inside a Ray job, ``RAY_ADDRESS`` points at the cluster.
"""

from rfdist.cli.main import app
from rfdist.recipes.submit import job_argv

if __name__ == "__main__":
    import sys

    app(["sweep", *job_argv(sys.argv[1:])])
