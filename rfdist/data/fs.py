"""Resolve a dataset URI (local folder or ``s3://bucket/prefix``) to a pyarrow filesystem.

S3 endpoint and credentials come from the standard AWS environment variables
(``AWS_ENDPOINT_URL[_S3]``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``)
or from ``storage_options`` (``endpoint_url``, ``key``, ``secret``, ``region``); they are never
printed. Connect/request timeouts and retries are bounded so an unreachable endpoint fails
within seconds instead of hanging.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from .errors import DataError

__all__ = ["join", "resolve"]


def resolve(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for ``uri``; S3 paths are returned as ``bucket/prefix``."""
    options = dict(storage_options or {})
    if uri.startswith("s3://"):
        path = uri[len("s3://") :].rstrip("/")
        if not path:
            raise DataError(f"{uri}: an S3 URI needs a bucket, e.g. s3://bucket/prefix")
        endpoint = (
            options.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        kwargs: dict[str, Any] = {
            "connect_timeout": float(options.get("connect_timeout", 3.0)),
            "request_timeout": float(options.get("request_timeout", 10.0)),
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(
                max_attempts=int(options.get("max_attempts", 2))
            ),
        }
        if endpoint:
            scheme, sep, host = endpoint.partition("://")
            kwargs["endpoint_override"] = host if sep else endpoint
            kwargs["scheme"] = scheme if sep else "https"
        region = options.get("region") or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        if options.get("key"):
            kwargs["access_key"] = options["key"]
            kwargs["secret_key"] = options.get("secret", "")
        try:
            return pafs.S3FileSystem(**kwargs), path
        except Exception as exc:  # bad option types etc.
            raise DataError(f"{uri}: cannot configure S3 access: {exc}") from None
    if "://" in uri and not uri.startswith("file://"):
        raise DataError(f"{uri}: unsupported URI scheme (use a local folder or s3://bucket/prefix)")
    return pafs.LocalFileSystem(), str(Path(uri.removeprefix("file://")).resolve())


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` (pyarrow paths use forward slashes everywhere)."""
    return "/".join([base.rstrip("/"), *parts])


def describe_s3_error(uri: str, exc: Exception) -> str:
    """One line for an S3 failure, classifying the common causes."""
    text = str(exc)
    lowered = text.lower()
    if (
        "access denied" in lowered
        or "access_denied" in lowered
        or "invalidaccesskeyid" in lowered
        or "signature" in lowered
        or ("403" in text)
    ):
        return f"{uri}: S3 refused the credentials (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    if "curl" in lowered or "connect" in lowered or "resolve" in lowered or "timeout" in lowered:
        return f"{uri}: cannot reach the S3 endpoint (check AWS_ENDPOINT_URL and the network)"
    if "nosuchbucket" in lowered or ("bucket" in lowered and "not" in lowered):
        return f"{uri}: the S3 bucket does not exist"
    return f"{uri}: S3 error: {text.splitlines()[0][:200]}"
