"""A pyarrow S3 filesystem that keeps retrying through a short S3 outage — also on Ray workers.

The AWS SDK's default (3 attempts) gives up within ~2 s, so an S3 endpoint that restarts
during a checkpoint upload fails the run. ``retry_strategy`` fixes that for one process only:
pyarrow does not pickle it, and Ray Train ships ``storage_filesystem`` to the controller and
workers by pickling. This subclass pickles its own arguments, the retry budget included.
"""

from __future__ import annotations

from typing import Any

import pyarrow.fs

__all__ = ["RetryingS3FileSystem"]

#: AWS default strategy: the n-th retry waits 25 ms · 2ⁿ — 10 attempts ≈ 25 s of retrying
ATTEMPTS = 10


class RetryingS3FileSystem(pyarrow.fs.S3FileSystem):
    """``pyarrow.fs.S3FileSystem(**kwargs)`` with ``max_attempts`` tries per request, picklable."""

    def __init__(self, *, max_attempts: int = ATTEMPTS, **kwargs: Any) -> None:
        super().__init__(retry_strategy=pyarrow.fs.AwsDefaultS3RetryStrategy(max_attempts=max_attempts), **kwargs)
        self._rebuild_args = {**kwargs, "max_attempts": max_attempts}

    def __reduce__(self):
        return (_rebuild, (self._rebuild_args,))


def _rebuild(args: dict[str, Any]) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(**args)
