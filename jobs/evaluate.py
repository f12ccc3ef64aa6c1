"""Ray job entry point: ``ray job submit -- python jobs/evaluate.py MODEL_URI --data URI [--ood-data URI]``.

The same as ``rfdist eval``.
"""

from rfdist.cli import app

if __name__ == "__main__":
    import sys

    app(["eval", *sys.argv[1:]])
