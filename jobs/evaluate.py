"""Ray job entry point: ``ray job submit -- python jobs/evaluate.py MODEL_URI --data URI [--ood-data URI]``.

The same evaluation as ``rfdist eval``; inside a Ray job, ``RAY_ADDRESS`` points at the cluster.
"""

from rfdist.cli.main import app

if __name__ == "__main__":
    import sys

    app(["eval", *sys.argv[1:]])
