"""A real S3 HTTP API for tests: moto's threaded server on 127.0.0.1 (free port)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SHARED_RAY: tuple[str, str] | None = None  # (node id, moto endpoint) of the shared Ray, once started


def start_moto():
    """moto's threaded server on a free 127.0.0.1 port: ``(server, endpoint)``."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def start_shared_ray(endpoint: str, num_cpus: int) -> None:
    """(Re)start this process's local Ray with ``endpoint`` and the test credentials exported."""
    global SHARED_RAY
    import ray

    from rfdist.runtime.cluster import start_local_ray

    ray.shutdown()
    with _s3_environment(endpoint, keep_ray=True):
        start_local_ray(num_cpus)
    SHARED_RAY = (ray.get_runtime_context().get_node_id(), endpoint)


def shared_ray_is_up(endpoint: str) -> bool:
    """Whether the Ray this process is connected to is the shared one started with ``endpoint``."""
    ray = sys.modules.get("ray")
    if SHARED_RAY is None or ray is None or not ray.is_initialized():
        return False
    return (ray.get_runtime_context().get_node_id(), endpoint) == SHARED_RAY


@pytest.fixture(scope="module")
def s3_server(shared_s3: str) -> Iterator[str]:
    """This worker's moto server with its endpoint and test credentials exported; yields the endpoint."""
    with _s3_environment(shared_s3):
        yield shared_s3


@contextlib.contextmanager
def _s3_environment(endpoint: str, *, keep_ray: bool = False) -> Iterator[None]:
    """Export the test credentials and ``AWS_ENDPOINT_URL``; restore the old values after."""
    ray = sys.modules.get("ray")
    if not keep_ray and ray is not None and ray.is_initialized() and not shared_ray_is_up(endpoint):
        # a Ray started elsewhere has workers without this endpoint and these credentials
        # (moto then answers their anonymous writes with 403 AccessDenied)
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in [*CREDENTIALS, "AWS_ENDPOINT_URL"]}
    os.environ.update(CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        **{"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"},
    ).create_bucket(Bucket=name)


class RestartableS3:
    """moto on 127.0.0.1 that a test can take down and bring back on the same port (state kept:
    moto's backends live in this process)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture
def restartable_s3() -> Iterator[RestartableS3]:
    """Like :func:`s3_server`, but the test holds the server (``stop()``/``start()``)."""
    server = RestartableS3()
    try:
        with _s3_environment(server.endpoint):
            yield server
    finally:
        server.stop()


class BucketView:
    """A plain boto3 view of moto's buckets, independent of rfdist's own S3 layer.

    ``glob("bucket/a/checkpoint_*/state.pt")`` matches keys and their parent "folders" segment by
    segment (``*`` never crosses ``/``), like a filesystem glob.
    """

    def __init__(self, endpoint: str) -> None:
        import boto3
        from botocore.config import Config

        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
        )

    def glob(self, pattern: str) -> list[str]:
        import fnmatch

        bucket, _, key_pattern = pattern.partition("/")
        prefix = key_pattern.split("*", 1)[0]
        depth = key_pattern.count("/")
        found: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                parts = item["Key"].split("/")
                if len(parts) > depth:
                    candidate = "/".join(parts[: depth + 1])
                    if fnmatch.fnmatchcase(candidate, key_pattern):
                        found.add(f"{bucket}/{candidate}")
        return sorted(found)

    def get(self, path: str, local: str) -> None:
        """Download ``bucket/key`` to ``local``; ``FileNotFoundError`` when the key is missing."""
        from botocore.exceptions import ClientError

        bucket, _, key = path.partition("/")
        try:
            self.client.download_file(bucket, key, local)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in {"404", "NoSuchKey"}:
                raise FileNotFoundError(path) from err
            raise
