"""Ray job entry point: ``ray job submit -- python jobs/score.py MODEL_URI --data URI --out URI [--split test]``.

The same batch scoring as ``rfdist score``; inside a Ray job, ``RAY_ADDRESS`` points at the cluster.
"""

from rfdist.cli.main import app

if __name__ == "__main__":
    import sys

    app(["score", *sys.argv[1:]])
