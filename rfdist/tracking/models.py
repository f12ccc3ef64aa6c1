"""MLflow: where runs are tracked, how a RectangularFlow is logged, registered and loaded back.

A flow is logged as an MLflow *pyfunc* (:mod:`rfdist.tracking.pyfunc`) with its weights
(``state.pt``, read with ``torch.load(weights_only=True)``), its ``ModelSpec`` (JSON), its
preprocessing, a signature and input example, and rfdist's sources in ``code/`` so that
``mlflow models serve`` works in a fresh environment; the requirements never name ``rfdist``
(that name on the public index is another project; ours is :data:`DIST_NAME`).
:func:`load_model` rebuilds the flow with the *installed* rfdist and executes nothing from the
artifact store, after checking the weights' sha256 against the one recorded at logging time.

Example:
    >>> resolve_tracking_uri("sqlite:///relative.db").startswith("sqlite:////")
    True
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import torch

from rfdist._dist import DIST_NAME, dist_version
from rfdist.core.builders import ModelSpec
from rfdist.core.model import RectangularFlow
from rfdist.tracking import __all__  # noqa: F401  (the package re-exports exactly these)
from rfdist.tracking.runs import filter_value

DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(configured: str | None = None, *, workdir: str | Path | None = None) -> str:
    """``configured``, else ``MLFLOW_TRACKING_URI``, else an absolute sqlite file in ``workdir``.

    Relative sqlite URIs are made absolute: Ray changes workers' working directories, so a
    relative database path would silently split one run's records across several files.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    base = Path(workdir or os.getcwd()).resolve()
    if not uri:
        return f"sqlite:///{base / DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///') :]).resolve()}"
    if "://" not in uri:  # a bare path: treat as a sqlite file
        return f"sqlite:///{(base / uri).resolve()}"
    return uri


def redact_uri(uri: str) -> str:
    """``uri`` with any ``user:password@`` removed, for printing and logging."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return uri


def _mlflow():
    import mlflow

    return mlflow


CODE_DIGEST_KEY = "rfdist_code_sha256"
STATE_DIGEST_KEY = "rfdist_state_sha256"
SPEC_DIGEST_KEY = "rfdist_spec_sha256"
PREPROCESS_DIGEST_KEY = "rfdist_preprocess_sha256"
FILE_DIGEST_KEYS = {"state": STATE_DIGEST_KEY, "spec": SPEC_DIGEST_KEY, "preprocess": PREPROCESS_DIGEST_KEY}
"""Each file the loader reads (an MLmodel artifact key) → the key of its sha256 in a digest record."""
RUN_DIGEST_TAG = "rfdist_digests/"
"""Run tag ``rfdist_digests/NAME``: the JSON digest record of the model logged as ``NAME`` in that run."""


def _requirements() -> list[str]:
    """What the pyfunc needs from the index: rfdist itself travels in the model's ``code/``.

    Never a line naming rfdist: the index's ``rfdist`` is an unrelated project.
    """
    import numpy
    import zuko

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"zuko=={zuko.__version__}",
        f"numpy=={numpy.__version__}",
        f"mlflow=={_mlflow().__version__}",
    ]


def file_digest(path: str | Path) -> str:
    """sha256 of one file."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(root: str | Path) -> str:
    """sha256 over every file under ``root`` (relative path + content), bytecode caches skipped."""
    import hashlib

    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + file_digest(path).encode() + b"\n")
    return digest.hexdigest()


def _stage_code(folder: Path) -> Path:
    """A copy of the installed rfdist package's sources under ``folder/rfdist`` (what serving runs)."""
    import shutil

    package = Path(__file__).resolve().parents[1]  # the rfdist package, not this layer
    target = folder / "rfdist"
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


class _DropLines(io.TextIOBase):
    """A text stream passing on every line except those starting with one of ``prefixes``."""

    def __init__(self, target: Any, prefixes: tuple[str, ...]) -> None:
        self.target, self.prefixes, self.pending = target, prefixes, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if not line.startswith(self.prefixes):
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending and not self.pending.startswith(self.prefixes):
            self.target.write(self.pending)
        self.pending = ""
        self.target.flush()


MLFLOW_REGISTRATION_LINES = ("Successfully registered model ", "Created version ", "Registered model ")
"""What MLflow prints (to stderr, not through logging) on registering; rfdist says it once itself."""


@contextlib.contextmanager
def quiet_mlflow():
    """No MLflow download bars, pyfunc type-hint advice, pickle caveat or registration lines
    (rfdist prints the registered version itself) on the console.

    The pickle caveat is answered by design: the pickle only names
    :class:`rfdist.tracking.pyfunc.RectangularFlowPyfunc`, and rfdist's own loader never unpickles.
    """
    import logging
    import warnings

    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    loggers = [logging.getLogger(name) for name in ("mlflow.pyfunc", "mlflow.models.model")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    stderr = _DropLines(sys.stderr, MLFLOW_REGISTRATION_LINES)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(stderr):
            warnings.filterwarnings("ignore", message=".*type hints to the `predict` method")
            yield
    finally:
        stderr.flush()
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def _example_rows(model: RectangularFlow, preprocess: dict | None, rows: int = 4):
    """Data-space rows for the input example: model samples when no training rows are given."""
    import numpy as np

    from rfdist.tracking.pyfunc import to_data_space

    torch.manual_seed(0)
    with torch.no_grad():
        samples = model.sample(rows).reshape(rows, -1).float()
    return np.asarray(to_data_space(samples, preprocess).numpy(), dtype=np.float32)


def log_flow_model(
    model: RectangularFlow,
    spec: ModelSpec,
    *,
    name: str | None = None,
    registered_model_name: str | None = None,
    input_example: Any = None,
    preprocess: dict | None = None,
):
    """Log ``model`` to the active MLflow run as a pyfunc (optionally registering it).

    The model directory holds ``state.pt`` (weights only), ``spec.json``, ``preprocess.json``,
    rfdist's sources in ``code/rfdist`` (for ``mlflow models serve`` in a fresh environment;
    their sha256 is in MLmodel's metadata and on the registered version), a signature (rows of
    ``D`` floats, params ``output``/``space``/``count``/``seed``) and an input example
    (``input_example`` rows, else model samples). ``name`` defaults to the registry name.
    Refuses a model with non-finite parameters: a NaN model must never reach the registry.
    """
    import numpy as np

    with quiet_mlflow():
        from rfdist.tracking.pyfunc import DEFAULT_PARAMS, RectangularFlowPyfunc, score_rows

    mlflow = _mlflow()
    for key, value in model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"refusing to log a model with non-finite parameter {key!r}")
    model = model.eval()
    data_dim = int(np.prod(model.data_shape))
    if input_example is None:
        example = _example_rows(model, preprocess)
    else:
        example = np.asarray(input_example, dtype=np.float32).reshape(-1, data_dim)[:4]
    output = score_rows(model, torch.from_numpy(example), preprocess)["log_prob"].numpy()
    signature = mlflow.models.infer_signature(example, output, params=DEFAULT_PARAMS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        state_path, spec_path = folder / "state.pt", folder / "spec.json"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, state_path)
        spec_path.write_text(json.dumps(spec.to_dict()))
        artifacts = {"state": str(state_path), "spec": str(spec_path)}
        if preprocess:
            (folder / "preprocess.json").write_text(json.dumps(preprocess))
            artifacts["preprocess"] = str(folder / "preprocess.json")
        code = _stage_code(folder / "code")
        metadata = {
            CODE_DIGEST_KEY: tree_digest(code),
            STATE_DIGEST_KEY: file_digest(state_path),
            SPEC_DIGEST_KEY: file_digest(spec_path),
            "rfdist_dist": f"{DIST_NAME}=={dist_version()}",
        }
        if preprocess:
            metadata[PREPROCESS_DIGEST_KEY] = file_digest(folder / "preprocess.json")
        with quiet_mlflow():
            info = mlflow.pyfunc.log_model(
                name=name or registered_model_name or "model",
                python_model=RectangularFlowPyfunc(),
                artifacts=artifacts,
                code_paths=[str(code)],
                pip_requirements=_requirements(),
                signature=signature,
                input_example=example,
                metadata=metadata,
                registered_model_name=registered_model_name,
            )
    _record_digests(info, name or registered_model_name or "model", registered_model_name, metadata)
    return info


def run_digest_tag(name: str) -> str:
    """The run tag holding the digest record of the model logged as ``name`` in that run.

    ``rfdist_digests/NAME``; a name MLflow refuses in a tag key (e.g. with ``\\``) is replaced
    by a hash of it.
    """
    import hashlib
    import re

    if re.fullmatch(r"[\w\-. :/]+", name):
        return f"{RUN_DIGEST_TAG}{name}"
    return f"{RUN_DIGEST_TAG}sha256-{hashlib.sha256(name.encode()).hexdigest()[:32]}"


def _record_digests(info, name: str, registered_model_name: str | None, metadata: dict[str, str]) -> None:
    """Copies of the digests in the tracking store, where the artifact store cannot rewrite them.

    The run's tag ``rfdist_digests/NAME`` (for ``runs:/RUN/NAME``), the logged model's tags (for
    ``models:/m-ID``) and the registered version's tags (for ``models:/NAME/…``).
    """
    client = _mlflow().MlflowClient()
    if info.run_id:
        client.set_tag(info.run_id, run_digest_tag(name), json.dumps(metadata, sort_keys=True))
    if getattr(info, "model_id", None):
        client.set_logged_model_tags(info.model_id, metadata)
    if registered_model_name and info.registered_model_version is not None:
        for key, value in metadata.items():
            client.set_model_version_tag(
                registered_model_name, str(info.registered_model_version), key, value
            )


class ModelIntegrityError(RuntimeError):
    """A model's files do not match (or lack) the digests recorded when it was logged, or are unusable."""


@dataclass
class LoadedFlow:
    """What :func:`load_flow` returns: the flow, its preprocessing and its MLmodel metadata."""

    model: RectangularFlow
    spec: ModelSpec
    preprocess: dict | None
    metadata: dict[str, Any]


def register_flow(model_uri: str, name: str) -> str:
    """Register a logged flow as a new version of ``name``; returns the version number.

    The version's tags get the model's digest record (read from the tracking store, never from
    the artifact), so ``models:/NAME/VERSION`` is verified like a model registered when logged.
    """
    record, _ = digest_record(model_uri)
    version = str(_mlflow().register_model(model_uri, name).version)
    client = _mlflow().MlflowClient()
    for key in (*FILE_DIGEST_KEYS.values(), CODE_DIGEST_KEY, "rfdist_dist"):
        if record.get(key):
            client.set_model_version_tag(name, version, key, record[key])
    return version


def _registered_version(ref: str):
    """The registered version a ``models:/NAME@ALIAS``/``NAME/VERSION``/``NAME/latest`` names."""
    client = _mlflow().MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, number = ref.rsplit("/", 1)
    if number == "latest":
        versions = client.search_model_versions(f"name={filter_value(name)}")
        return max(versions, key=lambda v: int(v.version))
    return client.get_model_version(name, number)


def digest_record(uri: str) -> tuple[dict[str, str], str]:
    """``(digests, where)``: the sha256 record of a model, from the tracking store, never the artifact.

    ``models:/NAME/…`` → the registered version's tags; ``models:/m-ID`` → the logged model's
    tags; ``runs:/RUN/NAME`` → the run's tag ``rfdist_digests/NAME``. The artifact's own MLmodel
    is never trusted: whoever can rewrite the files can rewrite it too. Any other URI form, or
    no record, is a :class:`ModelIntegrityError` (nothing would vouch for the files).
    """
    client = _mlflow().MlflowClient()
    record: dict[str, str] = {}
    try:
        ref = uri[len("models:/") :]
        if uri.startswith("models:/m-") and "/" not in ref and "@" not in ref:
            where = "the logged model's tags"
            record = dict(client.get_logged_model(ref).tags or {})
        elif uri.startswith("models:/"):
            where = "the registered version's tags"
            record = dict(_registered_version(ref).tags or {})
        elif uri.startswith("runs:/"):
            run_id, _, name = uri[len("runs:/") :].partition("/")
            where = f"run tag {run_digest_tag(name.strip('/'))}"
            text = client.get_run(run_id).data.tags.get(run_digest_tag(name.strip("/")))
            record = json.loads(text) if text else {}
        else:
            raise ModelIntegrityError(
                f"{uri}: only models:/ and runs:/ URIs can be verified (their digests live in the "
                "tracking store); log or register the model and load it by that URI"
            )
    except ModelIntegrityError:
        raise
    except Exception as exc:
        raise ModelIntegrityError(
            f"{uri}: cannot read the model's digest record ({str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(record, dict) or not all(record.get(FILE_DIGEST_KEYS[k]) for k in ("state", "spec")):
        raise ModelIntegrityError(
            f"{uri}: no sha256 record for spec.json and state.pt in {where} (a model logged before "
            "rfdist recorded them there: load it through the registry, models:/NAME/VERSION)"
        )
    return record, where


def _artifact_paths(mlmodel: Any, local: Path, uri: str) -> dict[str, Path]:
    """The pyfunc artifacts named in MLmodel, each confined to the downloaded model folder."""
    try:
        artifacts = mlmodel["flavors"]["python_function"].get("artifacts") or {}
        entries = {key: str(entry["path"]) for key, entry in artifacts.items()}
    except (KeyError, TypeError, AttributeError):
        raise ModelIntegrityError(f"{uri}: MLmodel has no python_function artifacts") from None
    base, paths = local.resolve(), {}
    for key, entry in entries.items():
        path = (local / entry).resolve()
        if Path(entry).is_absolute() or not path.is_relative_to(base):
            raise ModelIntegrityError(
                f"{uri}: MLmodel artifact {key!r} path {entry!r} leaves the model folder"
            )
        paths[key] = path
    for key in ("state", "spec"):
        if key not in paths or not paths[key].is_file():
            raise ModelIntegrityError(
                f"{uri}: the model has no {key} artifact (MLmodel python_function.artifacts)"
            )
    return paths


def _verify(paths: dict[str, Path], record: dict[str, str], uri: str, where: str) -> None:
    """Every file the loader reads matches ``record``; a recorded file that is missing is refused."""
    for key, digest_key in FILE_DIGEST_KEYS.items():
        want = record.get(digest_key)
        if key not in paths:
            if want:  # e.g. the preprocess entry deleted from MLmodel: the standardisation would go
                raise ModelIntegrityError(
                    f"{uri}: {key} artifact recorded in {where} is missing from MLmodel"
                )
            continue
        if not want:
            import warnings

            warnings.warn(
                f"{uri}: {paths[key].name} has no sha256 in {where} (logged by an older rfdist): NOT verified",
                UserWarning,
                stacklevel=3,
            )
        elif file_digest(paths[key]) != want:
            raise ModelIntegrityError(
                f"{uri}: {paths[key].name} does not match the sha256 recorded when it was logged ({where})"
            )


def _read_files(paths: dict[str, Path], uri: str) -> tuple[ModelSpec, dict, dict | None]:
    """``(spec, state, preprocess)`` read from verified files; anything unusable is one clear error."""
    import pickle

    try:
        spec = ModelSpec.from_dict(json.loads(paths["spec"].read_text()))
    except (ValueError, TypeError) as exc:
        raise ModelIntegrityError(f"{uri}: spec.json: {exc}") from None
    try:
        state = torch.load(paths["state"], map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ModelIntegrityError(
            f"{uri}: state.pt is not a plain weights file (torch.load(weights_only=True) refused it: "
            f"{str(exc).splitlines()[0][:120]})"
        ) from None
    preprocess = None
    if "preprocess" in paths:
        try:
            preprocess = json.loads(paths["preprocess"].read_text())
        except ValueError as exc:
            raise ModelIntegrityError(f"{uri}: preprocess.json is not valid JSON ({exc})") from None
    return spec, state, preprocess


def load_flow(uri: str, *, tracking_uri: str | None = None) -> LoadedFlow:
    """Rebuild a logged flow with the INSTALLED rfdist — nothing from the artifact store is executed.

    Reads ``MLmodel`` (YAML), ``spec.json`` (JSON, bounded by :class:`ModelSpec`), ``state.pt``
    (``torch.load(weights_only=True)``) and ``preprocess.json``, each after checking its sha256
    against the record in the tracking store (:func:`digest_record`), with paths confined to the
    model folder. A failed check is a :class:`ModelIntegrityError` with one line.
    """
    import yaml

    mlflow = _mlflow()
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    uri = _resolve_latest(uri)
    record, where = digest_record(uri)
    with quiet_mlflow(), tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        try:
            mlmodel = yaml.safe_load((local / "MLmodel").read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ModelIntegrityError(f"{uri}: cannot read MLmodel ({str(exc).splitlines()[0]})") from None
        metadata = dict((mlmodel or {}).get("metadata") or {}) if isinstance(mlmodel, dict) else {}
        paths = _artifact_paths(mlmodel, local, uri)
        _verify(paths, record, uri, where)
        spec, state, preprocess = _read_files(paths, uri)
    from rfdist.core.builders import build_model

    try:
        model = build_model(spec)
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelIntegrityError(
            f"{uri}: state.pt does not fit spec.json ({str(exc).splitlines()[0][:160]})"
        ) from None
    return LoadedFlow(model=model.eval(), spec=spec, preprocess=preprocess, metadata=metadata)


def load_model(uri: str, *, tracking_uri: str | None = None) -> RectangularFlow:
    """Load a logged flow (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/…``).

    Returns a :class:`RectangularFlow` in eval mode whose ``log_prob`` and ``sample`` work,
    built by the installed rfdist (see :func:`load_flow`).
    """
    return load_flow(uri, tracking_uri=tracking_uri).model


def verify_model_code(local_dir: str | Path) -> bool:
    """Whether a downloaded model directory's ``code/rfdist`` matches the digest in its MLmodel."""
    import yaml

    local_dir = Path(local_dir)
    metadata = yaml.safe_load((local_dir / "MLmodel").read_text()).get("metadata") or {}
    want = metadata.get(CODE_DIGEST_KEY)
    return bool(want) and tree_digest(local_dir / "code" / "rfdist") == want


def _resolve_latest(uri: str) -> str:
    """``models:/NAME@latest`` → ``models:/NAME/latest`` (MLflow reserves the alias name)."""
    if uri.startswith("models:/") and uri.lower().endswith("@latest"):
        return uri[: -len("@latest")] + "/latest"
    return uri


@dataclass
class ModelRecord:
    """One registered model version, as ``rfdist models show`` prints it."""

    name: str
    version: str
    aliases: list[str]
    run_id: str | None
    source: str
    metrics: dict[str, float]
    created: str  # ISO 8601, UTC (MLflow stores epoch milliseconds)
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def iso_time(epoch_ms: int | None) -> str:
    """MLflow's epoch milliseconds as ISO 8601 in UTC (``""`` when unknown).

    Example:
        >>> iso_time(1796229325940)
        '2026-12-02T16:35:25.940000+00:00'
    """
    import datetime

    if not epoch_ms:
        return ""
    return datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC).isoformat()


def _client(tracking_uri: str | None):
    mlflow = _mlflow()
    uri = resolve_tracking_uri(tracking_uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def register_with_aliases(
    name: str,
    version: str,
    *,
    metric: str = "val_nll",
    value: float | None,
    lower_is_better: bool = True,
    tracking_uri: str | None = None,
) -> list[str]:
    """Set ``champion`` on ``version`` when it beats the current champion on ``metric``.

    ``latest`` needs no alias: MLflow reserves that name, and rfdist resolves
    ``models:/NAME@latest`` to the newest version (which ``version`` is, just registered).
    Returns the aliases that now point at ``version`` (``latest`` is none of them: it is not an
    alias). A non-finite ``value`` never wins.
    """
    client = _client(tracking_uri)
    aliases: list[str] = []
    if value is None or not math.isfinite(value):
        return aliases
    try:
        current = client.get_model_version_by_alias(name, "champion")
    except Exception:  # no champion yet
        current = None
    best = None
    if current is not None and current.run_id:
        best = client.get_run(current.run_id).data.metrics.get(metric)
    better = best is None or (value < best if lower_is_better else value > best)
    if better:
        client.set_registered_model_alias(name, "champion", version)
        aliases.append("champion")
    return aliases


def _record(client, version) -> ModelRecord:
    metrics = {}
    if version.run_id:
        try:
            metrics = {
                k: v
                for k, v in client.get_run(version.run_id).data.metrics.items()
                if not k.startswith("system/")
            }  # fmt: skip  (the node's CPU/RAM: not the model's)
        except Exception:
            metrics = {}
    try:  # the registered model's alias map is authoritative (versions may come without aliases)
        alias_map = dict(getattr(client.get_registered_model(version.name), "aliases", None) or {})
    except Exception:
        alias_map = {}
    aliases = sorted({*(getattr(version, "aliases", []) or []),
                      *(a for a, v in alias_map.items() if str(v) == str(version.version))})  # fmt: skip
    return ModelRecord(
        name=version.name,
        version=str(version.version),
        aliases=aliases,
        run_id=version.run_id,
        source=version.source,
        metrics=metrics,
        created=iso_time(version.creation_timestamp),
        description=version.description or "",
        tags=dict(version.tags or {}),
    )


def list_models(*, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Registered models with their latest version and aliases."""
    client = _client(tracking_uri)
    out = []
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name={filter_value(model.name)}")
        aliases = {}
        for alias, version in (getattr(model, "aliases", None) or {}).items():
            aliases[alias] = str(version)
        out.append(
            {
                "name": model.name,
                "versions": len(versions),
                "latest_version": max((int(v.version) for v in versions), default=0),
                "aliases": aliases,
            }
        )
    return out


def get_model_record(ref: str, *, tracking_uri: str | None = None) -> ModelRecord:
    """``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION`` (a ``models:/`` prefix is accepted)."""
    client = _client(tracking_uri)
    ref = ref.removeprefix("models:/")
    if ref.lower().endswith("@latest"):
        ref = ref[: -len("@latest")]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in ref:
        name, number = ref.split("/", 1)
        version = client.get_model_version(name, number)
    else:
        versions = client.search_model_versions(f"name={filter_value(ref)}")
        if not versions:
            raise LookupError(f"no registered model named {ref!r}")
        version = max(versions, key=lambda v: int(v.version))
    return _record(client, version)


def promote(name: str, version: str, alias: str, *, tracking_uri: str | None = None) -> None:
    """Point ``alias`` of model ``name`` at ``version``."""
    client = _client(tracking_uri)
    client.get_model_version(name, version)  # raises a clear MLflow error when missing
    client.set_registered_model_alias(name, alias, version)
