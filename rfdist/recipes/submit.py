"""Jobs on a Ray cluster: build and submit ``rfdist train|sweep|eval`` as a Ray job.

``rfdist submit`` wraps Ray's ``JobSubmissionClient`` (the Jobs API on the dashboard port,
8265 by default). A job runs one of the thin entry points in ``jobs/`` inside the uploaded
project:

- **working_dir** = the project root, uploaded by Ray, which honours ``.gitignore`` and
  ``.rayignore`` (the data, runs, MLflow databases and ``.venv`` stay home). Ray puts the
  working dir first on ``PYTHONPATH`` of the driver and of every worker, so the uploaded
  ``rfdist`` wins over an installed one. ``install_deps`` adds the project's dependencies from
  ``pyproject.toml`` as a ``pip`` runtime_env, for clusters whose image lacks them.
- **the config**: when the file is inside the working dir and not ignored, the job gets its
  relative path (``python jobs/train.py rfdist/presets/von-mises.yaml --set …``, the same
  command as ``ray job submit``). Any other file — outside the project, or ignored — travels
  as text in the job's environment (``RFDIST_JOB_CONFIG``) and :func:`job_argv` writes it back
  to a file under its own name inside the job: robust to wherever the user keeps configs, and
  configs hold no secrets (credentials come from the environment).
- **environment**: an allow-list (:data:`FORWARDED_ENV`: MLflow tracking URI, S3 endpoints,
  region) is copied into the job. Credentials (:data:`CREDENTIAL_ENV`) only with
  ``forward_credentials`` — a cluster should get them from its own secrets/instance role — and
  ``RAY_AUTH_*`` never: the cluster has its own token. Nothing printed ever contains a secret
  value (:class:`Redactor`).
- **auth**: the client sends the token Ray's own loader finds (``RAY_AUTH_TOKEN``,
  ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) when ``RAY_AUTH_MODE=token``; a token
  source alone also turns token mode on. A 401/403 becomes one ``error:`` line.

Exit codes of a followed job: :data:`EXIT_CODES`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "CREDENTIAL_ENV",
    "ENTRYPOINTS",
    "EXIT_CODES",
    "FORWARDED_ENV",
    "INLINE_CONFIG_ENV",
    "JobSpec",
    "Redactor",
    "SubmitError",
    "build_job",
    "connect",
    "follow",
    "job_argv",
    "job_env",
]

ENTRYPOINTS = {
    "train": "jobs/train.py",
    "sweep": "jobs/sweep.py",
    "eval": "jobs/evaluate.py",
    "score": "jobs/score.py",
}
"""``rfdist submit KIND`` → the script the job runs (relative to the working dir)."""

FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_EXPERIMENT_NAME",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)
"""Copied into the job's environment when set here (no secrets among them)."""

CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
"""Forwarded only on request (``--forward-credentials``); their values are never printed."""

SECRET_ENV = (*CREDENTIAL_ENV, "RAY_AUTH_TOKEN")
INLINE_CONFIG_ENV = "RFDIST_JOB_CONFIG"
INLINE_PREFIX = "@inline:"

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
"""A followed job's final status → the exit code of ``rfdist submit --wait``."""

TERMINAL = frozenset(EXIT_CODES)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class SubmitError(RuntimeError):
    """A submission problem; the message is one line meant for the user."""


# ----------------------------------------------------------------------------- redaction
class Redactor:
    """Removes secret values and ``user:password@`` from text before it is printed."""

    _USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")

    def __init__(self, environ: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> None:
        environ = os.environ if environ is None else environ
        values = [environ.get(name, "") for name in SECRET_ENV]
        token_path = environ.get("RAY_AUTH_TOKEN_PATH")
        for path in (token_path, Path.home() / ".ray" / "auth_token"):
            with contextlib.suppress(OSError, TypeError):
                values.append(Path(path).read_text().strip())
        # Short values would redact ordinary words; real secrets are long.
        self._secrets = sorted({v for v in [*values, *extra] if len(v) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._secrets:
            text = text.replace(value, "***")
        return self._USERINFO.sub(r"\1***@", text)


# ----------------------------------------------------------------------------- the job
@dataclass
class JobSpec:
    """Everything ``submit_job`` needs, plus what may be shown to the user."""

    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str
    metadata: dict[str, str]
    forwarded: list[str] = field(default_factory=list)  # names only
    notes: list[str] = field(default_factory=list)


def job_env(environ: Mapping[str, str] | None = None, *, forward_credentials: bool = False) -> dict[str, str]:
    """The job's ``env_vars``: the allow-list, plus credentials only when asked.

    A relative sqlite tracking URI is made absolute here (the job runs in another directory).
    """
    from rfdist.tracking.models import resolve_tracking_uri

    environ = os.environ if environ is None else environ
    names = FORWARDED_ENV + (CREDENTIAL_ENV if forward_credentials else ())
    env = {name: environ[name] for name in names if environ.get(name)}
    if not forward_credentials:  # a URI's user:password@ is a credential too
        env = {name: strip_userinfo(value) for name, value in env.items()}
    if "MLFLOW_TRACKING_URI" in env:
        env["MLFLOW_TRACKING_URI"] = resolve_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return env


_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")


def strip_userinfo(text: str) -> str:
    """``text`` with the ``user:password@`` of every URI in it removed (the rest kept as is).

    What a job receives (``runtime_env``, entrypoint, an inline config) is stored on the
    cluster and readable through the Jobs API: credentials travel only with ``--forward-credentials``.
    """
    return _USERINFO.sub(r"\1", text)


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` holding ``jobs/train.py`` and ``rfdist/``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "jobs" / "train.py").is_file() and (folder / "rfdist").is_dir():
            return folder
    package_root = Path(__file__).resolve().parents[2]
    if (package_root / "jobs" / "train.py").is_file():
        return package_root
    raise SubmitError(
        f"cannot find the project (a folder with jobs/train.py and rfdist/) at or above {here}: "
        "run from the project or pass --working-dir"
    )


def is_uploaded(file: Path, root: Path) -> bool:
    """Whether Ray's working_dir upload of ``root`` includes ``file`` (``.gitignore``/``.rayignore``).

    Mirrors Ray's own walk (``ray.job_submission`` has no public call for it): each folder's
    ignore files, read as gitignore patterns (``pathspec``, as Ray does), apply to the paths
    below that folder; ``.gitignore`` counts unless ``RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1``.
    Any doubt → ``False``.
    """
    import pathspec

    try:
        rel = file.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    names = [".rayignore"]
    if os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1":
        names.insert(0, ".gitignore")
    rules: list[tuple[Path, pathspec.GitIgnoreSpec]] = []
    current = root.resolve()
    try:
        for part in rel.parts:
            for name in names:
                if (current / name).is_file():
                    lines = (current / name).read_text().splitlines()
                    rules.append((current, pathspec.GitIgnoreSpec.from_lines(lines)))
            current = current / part
            if any(spec.match_file(str(current.relative_to(base))) for base, spec in rules):
                return False
    except (OSError, ValueError):
        return False
    return True


def _pyproject_deps(root: Path) -> list[str]:
    import tomllib

    try:
        return list(tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise SubmitError(
            f"--install-deps: cannot read dependencies from {root / 'pyproject.toml'}: {exc}"
        ) from None


def _is_local_path(value: str | None) -> bool:
    return bool(value) and "://" not in value


def _pin_local_paths(cfg, overrides: list[str], workdir: Path) -> tuple[list[str], list[str]]:
    """Absolute paths for relative local ``storage.path``, ``data.path`` and sqlite ``tracking.uri``.

    A job runs in a temporary copy of the project: a relative path there would write the
    checkpoints or the MLflow database somewhere that is deleted with the job.
    """
    from rfdist.tracking.models import resolve_tracking_uri

    pinned, notes = list(overrides), []
    for key, value in (("storage.path", cfg.storage.path), ("data.path", cfg.data.path)):
        if _is_local_path(value) and not Path(value).is_absolute():
            absolute = str((workdir / value).resolve())
            pinned.append(f"{key}={absolute}")
            notes.append(f"{key} is relative: pinned to {absolute}")
    uri = cfg.tracking.uri
    relative_sqlite = bool(uri) and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////")
    if uri and (relative_sqlite or "://" not in uri):
        absolute = resolve_tracking_uri(uri, workdir=workdir)
        pinned.append(f"tracking.uri={absolute}")
        notes.append(f"tracking.uri is relative: pinned to {absolute}")
    return pinned, notes


def is_loopback(address: str) -> bool:
    """Whether a dashboard address points at this machine."""
    host = urlsplit(address if "://" in address else f"http://{address}").hostname or ""
    return host in LOOPBACK or host.startswith("127.")


@dataclass
class _JobConfig:
    """What a job's config argument settled: the argument itself and what validating it found."""

    argument: str  # a path inside the uploaded project, ``@inline:NAME``, or the model URI
    name: str  # the run's name (the job kind when the config was not read)
    overrides: list[str]  # with relative local paths pinned
    tracking: str | None = None  # the config's tracking.uri, when known
    notes: list[str] = field(default_factory=list)


def _job_config(
    kind: str,
    target: str,
    overrides: list[str],
    *,
    address: str,
    root: Path,
    env: dict[str, str],
    validate: bool,
) -> _JobConfig:
    """The config of a ``train``/``sweep`` job, validated here; its text joins ``env`` when not uploaded."""
    if kind not in ("train", "sweep"):
        return _JobConfig(argument=target, name=kind, overrides=overrides)
    job = _JobConfig(argument="", name=kind, overrides=overrides)
    config = Path(target).expanduser()
    if not config.is_file():  # a preset's name (`rfdist submit train von-mises`): its file
        from rfdist import presets

        config = presets.find(target) or config
    if validate:
        from rfdist.config import load_config
        from rfdist.recipes.preflight import check_config

        cfg = load_config(config, overrides)  # ConfigError: the caller prints it
        check_config(cfg, sweep=kind == "sweep")  # batch vs workers, sweep schedule
        job.name = cfg.name
        job.overrides, job.notes = _pin_local_paths(cfg, overrides, Path.cwd())
        tracking = next((o.split("=", 1)[1] for o in job.overrides if o.startswith("tracking.uri=")), None)
        job.tracking = tracking or cfg.tracking.uri
        if not is_loopback(address) and any(_is_local_path(v) for v in (cfg.storage.path, cfg.data.path)):
            job.notes.append(
                "storage.path/data.path are local paths: a multi-node cluster needs s3:// (see README)"
            )
    elif not config.is_file():
        raise SubmitError(f"config file not found: {config}")
    if is_uploaded(config, root):
        job.argument = config.resolve().relative_to(root).as_posix()
    else:
        env[INLINE_CONFIG_ENV] = config.read_text()
        job.argument = f"{INLINE_PREFIX}{config.name}"
        job.notes.append(f"{config} is not in the uploaded project: its text travels with the job")
    return job


def _tracking_notes(tracking: str | None, env: dict[str, str], address: str) -> list[str]:
    """Where the job's MLflow runs go; with no URI anywhere, this folder's ``mlflow.db`` (set in ``env``)."""
    notes = []
    effective = tracking or env.get("MLFLOW_TRACKING_URI")
    if not effective:
        # As `rfdist train` here: this folder's mlflow.db, not one inside the job's temporary copy.
        from rfdist.tracking.models import resolve_tracking_uri

        effective = env["MLFLOW_TRACKING_URI"] = resolve_tracking_uri(
            "sqlite:///mlflow.db", workdir=Path.cwd()
        )
        notes.append(f"MLflow tracking: {effective}")
    if not is_loopback(address) and effective.startswith("sqlite:"):
        notes.append("MLflow tracking is a local sqlite file: a remote cluster needs an MLflow server URL")
    return notes


def build_job(
    kind: str,
    target: str,
    *,
    overrides: list[str] | None = None,
    extra_args: list[str] | None = None,
    address: str = "",
    working_dir: Path | None = None,
    validate: bool = True,
    install_deps: bool = False,
    forward_credentials: bool = False,
    submission_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> JobSpec:
    """The Ray job for ``rfdist KIND TARGET --set … EXTRA…`` (validated here unless told not to).

    ``target`` is a config file for ``train``/``sweep`` and a model URI for ``eval``/``score``.
    """
    if kind not in ENTRYPOINTS:
        raise SubmitError(f"unknown job kind {kind!r} (expected one of {', '.join(ENTRYPOINTS)})")
    environ = os.environ if environ is None else environ
    root = (working_dir or find_project_root()).resolve()
    if not (root / ENTRYPOINTS[kind]).is_file():
        raise SubmitError(f"{root / ENTRYPOINTS[kind]} not found: is {root} the project root?")
    env = job_env(environ, forward_credentials=forward_credentials)
    job = _job_config(
        kind, target, list(overrides or []), address=address, root=root, env=env, validate=validate
    )
    notes = [*job.notes, *_tracking_notes(job.tracking, env, address)]
    argv = ["python", ENTRYPOINTS[kind], job.argument]
    for item in job.overrides:
        argv += ["--set", item]
    argv += list(extra_args or [])
    if not forward_credentials:
        notes += _strip_credentials(argv, env, environ)
    runtime_env: dict[str, Any] = {"working_dir": str(root), "env_vars": env}
    if install_deps:
        runtime_env["pip"] = _pyproject_deps(root)
    slug = re.sub(r"[^a-zA-Z0-9-]+", "-", job.name).strip("-")[:40] or kind
    job_id = submission_id or f"rfdist-{kind}-{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    forwarded = sorted(k for k in env if k != INLINE_CONFIG_ENV)
    env["RFDIST_RAY_JOB_ID"] = job_id  # the MLflow run is tagged with it (rfdist.tracking.lineage)
    from rfdist.runtime.console import JOB_CONSOLE_ENV, JOB_WORKER_SETUP_HOOK

    for key, value in JOB_CONSOLE_ENV.items():  # a quiet job log (no progress bars, no colours)
        env.setdefault(key, value)
    runtime_env["worker_process_setup_hook"] = JOB_WORKER_SETUP_HOOK  # Ray Data's INFO lines to its log
    if is_loopback(address):
        # a head on this machine: Ray Train's placement-group cleaner finds its cluster by this
        # address rather than by scanning the machine (which fails beside another Ray); the
        # one-node head has no draining nodes for the preemption watcher to poll
        env.setdefault("RAY_API_SERVER_ADDRESS", address)
        env.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    return JobSpec(
        entrypoint=shlex.join(argv),
        runtime_env=runtime_env,
        submission_id=job_id,
        metadata={"rfdist.kind": kind, "rfdist.target": Redactor(environ)(target)},
        forwarded=forwarded,
        notes=notes,
    )


def _strip_credentials(argv: list[str], env: dict[str, str], environ: Mapping[str, str]) -> list[str]:
    """Remove ``user:password@`` from the job's arguments and inline config (in place); a note if any."""
    stripped = [
        name for name in FORWARDED_ENV if environ.get(name, "") != strip_userinfo(environ.get(name, ""))
    ]
    for i, arg in enumerate(argv):
        if strip_userinfo(arg) != arg:
            argv[i] = strip_userinfo(arg)
            stripped.append(arg.split("=", 1)[0] if "=" in arg else "an argument")
    if INLINE_CONFIG_ENV in env and strip_userinfo(env[INLINE_CONFIG_ENV]) != env[INLINE_CONFIG_ENV]:
        env[INLINE_CONFIG_ENV] = strip_userinfo(env[INLINE_CONFIG_ENV])
        stripped.append("the inline config")
    if not stripped:
        return []
    return [
        f"removed user:password@ from {', '.join(stripped)} (credentials travel only with "
        "--forward-credentials; prefer the cluster's own secrets)"
    ]


def job_argv(argv: list[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Inside a job: turn an ``@inline:NAME`` config argument back into a file named NAME."""
    environ = os.environ if environ is None else environ
    if argv and argv[0].startswith(INLINE_PREFIX):
        name = Path(argv[0][len(INLINE_PREFIX) :]).name or "config.yaml"
        if INLINE_CONFIG_ENV not in environ:
            print(f"error: {argv[0]} given but {INLINE_CONFIG_ENV} is not set", file=sys.stderr)
            raise SystemExit(2)
        path = Path(tempfile.mkdtemp(prefix="rfdist-config-")) / name
        path.write_text(environ[INLINE_CONFIG_ENV])
        return [str(path), *argv[1:]]
    return list(argv)


# ----------------------------------------------------------------------------- the client
def _token_available(environ: Mapping[str, str]) -> bool:
    if environ.get("RAY_AUTH_TOKEN"):
        return True
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()


def _enable_token_mode() -> None:
    """``RAY_AUTH_MODE=token`` when unset and a token source exists (Ray's own head rule)."""
    if "RAY_AUTH_MODE" not in os.environ and _token_available(os.environ):
        os.environ["RAY_AUTH_MODE"] = "token"
    from rfdist.runtime.ray_internals import refresh_ray_config

    with contextlib.suppress(Exception):  # RayConfig caches the mode: refresh it
        refresh_ray_config()


def _auth_message(address: str, exc: Exception) -> str:
    text = str(exc)
    if "401" in text or "Missing" in text or "no authentication token" in text:
        return (
            f"the Ray cluster at {address} requires a token: set RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)"
        )
    return (
        f"the Ray cluster at {address} refused the token: check RAY_AUTH_TOKEN "
        "(or RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)"
    )


@contextlib.contextmanager
def cluster_errors(address: str):
    """Turn the Jobs API's auth/connection failures into :class:`SubmitError` (one line)."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        raise SubmitError(_auth_message(address, exc)) from None
    except ConnectionError as exc:
        raise SubmitError(
            f"cannot reach the Ray cluster at {address} ({str(exc).splitlines()[0]}): is the head "
            "running, and is this its dashboard address (port 8265 by default)?"
        ) from None


def resolve_address(address: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``--address``, else ``RAY_API_SERVER_ADDRESS``, else an http ``RAY_ADDRESS``."""
    environ = os.environ if environ is None else environ
    address = address or environ.get("RAY_API_SERVER_ADDRESS") or ""
    if not address and environ.get("RAY_ADDRESS", "").startswith(("http://", "https://")):
        address = environ["RAY_ADDRESS"]
    if not address:
        raise SubmitError(
            "no cluster address: pass --address http://HOST:8265 (or set RAY_API_SERVER_ADDRESS)"
        )
    if "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/")


def connect(address: str, *, warn: Callable[[str], None] | None = None):
    """A ``JobSubmissionClient`` for ``address`` that has checked the connection and the token."""
    _enable_token_mode()
    if (
        warn is not None
        and address.startswith("http://")
        and not is_loopback(address)
        and os.environ.get("RAY_AUTH_MODE") == "token"
    ):
        warn(
            f"sending the Ray token over plain HTTP to {address}: use an SSH tunnel "
            "(`ray dashboard`, `kubectl port-forward`) or TLS"
        )
    import logging

    from ray.job_submission import JobSubmissionClient

    # the upload's per-folder "Ignoring upload…"/"Uploading package…" INFO lines and notices
    # about Ray's default excludes (.git, .venv: what rfdist leaves home anyway) stay quiet
    logging.getLogger("ray").setLevel(logging.WARNING)
    for name in ("ray._private.runtime_env.packaging", "ray.dashboard.modules.dashboard_sdk",
                 "ray.dashboard.modules.job.sdk", "ray._private.runtime_env.working_dir"):  # fmt: skip
        logging.getLogger(name).setLevel(logging.ERROR)
    with cluster_errors(address), _without(ADDRESS_ENV):
        client = JobSubmissionClient(address)
        if client.get_address().rstrip("/") != address:  # Ray resolved it elsewhere: never talk there
            raise SubmitError(f"the Jobs API client chose {client.get_address()} instead of {address}")
        client.list_jobs()  # the version check does not need a token; this does
    return client


ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
"""Variables ``JobSubmissionClient`` prefers over the address it is given (Ray 2.60)."""


@contextlib.contextmanager
def _without(names: Iterable[str]):
    """``os.environ`` without ``names`` while the block runs (restored afterwards).

    Ray's ``get_address_for_submission_client`` lets ``RAY_API_SERVER_ADDRESS``/``RAY_ADDRESS``
    override the address passed to ``JobSubmissionClient``: the job, its token and any forwarded
    credentials would go to a cluster the user did not name. rfdist resolves the address itself
    (:func:`resolve_address`: ``--address`` first) and hides the variables from the client.
    """
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def follow(client, job_id: str, write: Callable[[str], None], redact: Redactor) -> str:
    """Stream the job's logs to ``write`` until it ends; return its final status name."""
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(redact(chunk))

    try:
        asyncio.run(tail())
    except Exception as exc:  # the stream can drop: fall back to polling
        write(redact(f"[rfdist] log stream ended ({type(exc).__name__}); polling for the status\n"))
    while True:
        status = status_name(client.get_job_status(job_id))
        if status in TERMINAL:
            return status
        time.sleep(2)


def status_name(status: Any) -> str:
    """``JobStatus.SUCCEEDED`` / ``'SUCCEEDED'`` → ``'SUCCEEDED'``."""
    return str(getattr(status, "value", status)).rsplit(".", 1)[-1]
