"""Ray job entry point: ``ray job submit -- python jobs/sweep.py CONFIG [--set key=value …]``.

The same sweep as ``rfdist sweep``; inside a Ray job, ``RAY_ADDRESS`` points at the cluster.
"""

from rfdist.cli import app

if __name__ == "__main__":
    import sys

    app(["sweep", *sys.argv[1:]])
