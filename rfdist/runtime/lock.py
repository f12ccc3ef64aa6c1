"""One writer per checkpoint folder: a lock beside it, held by the driver for the whole run.

Two ``rfdist train`` of the same name (and ``storage.path``) would otherwise share one Ray Train
folder, each with its own MLflow run. The driver takes ``STORAGE/NAME.lock`` after preflight,
before Ray starts and before the MLflow run opens; the second one gets one line naming the
holder (host, pid, MLflow run id once known, start time) and exits 1 (a runtime conflict: the
same command works once the other run ends).

- **Local storage**: ``fcntl.flock`` on the lock file. The kernel releases it when the owner
  exits, however it exits (crash, SIGKILL), so a dead owner never leaves a stale lock; the
  file only records who holds it (it is left in place, empty, after release: deleting a lock
  file others may have open would let two owners lock two different files).
- **S3** (no renames, no locks): a lease object created with a conditional put
  (``If-None-Match: *``: exactly one creator wins; S3 and MinIO honour it). Its owner renews
  it every :data:`HEARTBEAT_S` seconds with ``If-Match`` on its own ETag (a lost lease is
  noticed) and deletes it at the end. A lease not renewed for :data:`STALE_S` seconds belongs
  to a dead owner: it is taken over with ``If-Match`` on the stale ETag, so of two processes
  taking over at once only one wins.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HEARTBEAT_S", "STALE_S", "RunLock", "RunLocked", "acquire"]

HEARTBEAT_S = 15.0
"""Seconds between renewals of an S3 lease."""
STALE_S = 120.0
"""An S3 lease not renewed for this long is a dead owner's (eight missed renewals)."""


class RunLocked(RuntimeError):
    """Another live process holds this run's checkpoint folder."""


def _owner(run_id: str | None = None) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "heartbeat": time.time()}  # fmt: skip


def _held(name: str, where: str, owner: dict[str, Any] | None) -> RunLocked:
    owner = owner or {}
    run = f"MLflow run {owner['run_id']}, " if owner.get("run_id") else ""
    who = (
        f"{run}host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, since {owner.get('started', '?')}"
    )
    return RunLocked(
        f"storage.path: run {name!r} is being trained by another process ({who}); lock {where}. "
        "Wait for it to finish or stop it, or choose another name"
    )


@dataclass
class RunLock:
    """A held lock; :meth:`set_run_id` records the MLflow run, :meth:`release` lets go (idempotent)."""

    name: str
    where: str
    owner: dict[str, Any]
    _fd: int | None = None
    _s3: Any = None
    _etag: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def _write(self) -> None:
        data = json.dumps(self.owner).encode()
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        elif self._s3 is not None:
            client, bucket, key = self._s3
            self.owner["heartbeat"] = time.time()
            answer = client.put_object(Bucket=bucket, Key=key, Body=json.dumps(self.owner).encode(),
                                       IfMatch=self._etag)  # fmt: skip
            self._etag = answer["ETag"]

    def set_run_id(self, run_id: str) -> None:
        self.owner["run_id"] = run_id
        self._write()

    def _renew(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except Exception as exc:  # a lost lease or S3 down: say so once, the run goes on
                print(f"[rfdist] warning: could not renew the lock {self.where}: {exc}", flush=True)
                return

    def release(self) -> None:
        self._stop.set()
        if self._fd is not None:
            import fcntl

            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        elif self._s3 is not None:
            client, bucket, key = self._s3
            try:
                client.delete_object(Bucket=bucket, Key=key)
            except Exception as exc:
                print(f"[rfdist] warning: could not delete the lock {self.where}: {exc}", flush=True)
            self._s3 = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(storage_path: str, name: str) -> RunLock:
    """Lock ``storage_path``'s folder for run ``name`` (``STORAGE/NAME.lock``) or raise :class:`RunLocked`."""
    if storage_path.startswith("s3://"):
        return _acquire_s3(storage_path, name)
    from pathlib import Path

    folder = Path(storage_path.removeprefix("file://")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return _acquire_local(str(folder / f"{name}.lock"), name)


def _acquire_local(path: str, name: str) -> RunLock:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            owner = None  # the holder is still writing its name
        os.close(fd)
        raise _held(name, path, owner) from None
    lock = RunLock(name, path, _owner(), _fd=fd)
    lock._write()
    return lock


def _s3_client() -> Any:
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 3})
    return boto3.client("s3", endpoint_url=endpoint or None, config=config)


def _acquire_s3(storage_path: str, name: str) -> RunLock:
    from botocore.exceptions import ClientError

    bucket, _, prefix = storage_path[len("s3://") :].rstrip("/").partition("/")
    key = f"{prefix}/{name}.lock" if prefix else f"{name}.lock"
    where = f"s3://{bucket}/{key}"
    client = _s3_client()
    owner = _owner()
    body = json.dumps(owner).encode()
    try:
        answer = client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "PreconditionFailed",
            "ConditionalRequestConflict",
        ):
            raise
        answer = _take_over_stale(client, bucket, key, body, name, where)
    lock = RunLock(name, where, owner, _s3=(client, bucket, key), _etag=answer["ETag"])
    threading.Thread(target=lock._renew, name="rfdist-lock-heartbeat", daemon=True).start()
    return lock


def _take_over_stale(client: Any, bucket: str, key: str, body: bytes, name: str, where: str) -> dict:
    """Replace a lease whose owner stopped renewing it :data:`STALE_S` ago (``If-Match``: one winner)."""
    from botocore.exceptions import ClientError

    current = client.get_object(Bucket=bucket, Key=key)
    try:
        holder = json.loads(current["Body"].read())
    except ValueError:
        holder = {}
    if time.time() - float(holder.get("heartbeat", 0)) < STALE_S:
        raise _held(name, where, holder)
    print(f"[rfdist] lock {where}: its owner ({holder.get('host')}, pid {holder.get('pid')}) stopped renewing "
          f"it; taking it over", flush=True)  # fmt: skip
    try:
        return client.put_object(Bucket=bucket, Key=key, Body=body, IfMatch=current["ETag"])
    except ClientError:
        raise _held(name, where, holder) from None  # another process took it over first
