"""Ray job entry point: ``ray job submit -- python jobs/train.py CONFIG [--set key=value …]``.

The same run as ``rfdist train``; inside a Ray job, ``RAY_ADDRESS`` points at the cluster.
"""

from rfdist.cli import app

if __name__ == "__main__":
    import sys

    app(["train", *sys.argv[1:]])
