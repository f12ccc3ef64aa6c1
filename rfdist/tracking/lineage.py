"""Lineage of a training run in MLflow: who/what/which commit, which dataset, which Ray job.

- :func:`run_tags` — MLflow's own run context (user, source name/type, the entry point's git
  commit) plus the git commit of the rfdist checkout that trains (when it is a git checkout),
  and the Ray job's submission id when the run happens inside a Ray job.
- :func:`experiment_name` — ``MLFLOW_EXPERIMENT_NAME`` (which ``rfdist submit`` forwards) wins
  over the built-in default experiment; an experiment named in the config wins over both.
- :func:`log_dataset` — ``mlflow.log_input`` with a digest of the dataset's manifest.
- :func:`describe_version` — a registered version's tags (val NLL, dataset digest, commit) and
  description.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

from rfdist.config import TrackingConfig

__all__ = ["DEFAULT_EXPERIMENT", "dataset_digest", "dataset_uri", "describe_run", "describe_version", "experiment_name", "git_commit",
           "log_dataset", "run_tags"]  # fmt: skip

DEFAULT_EXPERIMENT: str = TrackingConfig.model_fields["experiment"].default  # the schema is its one home
RUN_DESCRIPTION = "rfdist training run `{name}`: a rectangular flow (d={d}, D={D}) trained on {data}."
EXPERIMENT_DESCRIPTION = "Rectangular normalizing flows trained with rfdist (Ray Train + MLflow)."
# MLflow's system tag keys, as its tracking docs ("System Tags") and mlflow.log_input document them
USER_TAG = "mlflow.user"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
RUN_NOTE_TAG = "mlflow.note.content"
DATASET_CONTEXT_TAG = "mlflow.data.context"
# MLflow 3's UI opens an experiment without a kind in its GenAI (traces) view; this kind opens it
# in the model-training view (runs, metrics, charts). MLflow's own key and value (its UI and
# mlflow/utils/mlflow_tags.py).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def experiment_name(configured: str) -> str:
    """The experiment a run goes to: the config's, else ``MLFLOW_EXPERIMENT_NAME``, else the default."""
    env = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if env and configured == DEFAULT_EXPERIMENT:
        return env
    return configured


def git_commit(folder: str | Path | None = None) -> str | None:
    """The HEAD commit of the git checkout holding ``folder`` (default: rfdist's sources), or ``None``."""
    folder = Path(folder or Path(__file__).resolve().parent)
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if len(commit) == 40 else None


def run_tags(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Tags for a new run: MLflow's run context, rfdist's git commit, the Ray job id; then ``extra``."""
    from rfdist.tracking.mlflow_internals import context_tags

    tags = context_tags()
    tags.setdefault(USER_TAG, getpass.getuser())
    commit = git_commit()
    if commit:  # MLflow's own key (the UI shows it): rfdist's checkout, the code that trains
        tags[GIT_COMMIT_TAG] = commit
    job = os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RFDIST_RAY_JOB_ID")
    if job:
        tags["ray.job_submission_id"] = job
    tags.update(extra or {})
    return tags


def dataset_digest(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """sha256 (first 16 hex digits) of the dataset's ``_MANIFEST.json``, else of its file list."""
    from rfdist.data.fs import join, resolve
    from rfdist.data.parquet import MANIFEST

    fs, root = resolve(uri, storage_options)
    try:
        with fs.open_input_stream(join(root, MANIFEST)) as handle:
            content = handle.read()
    except OSError:
        import pyarrow.fs as pafs

        entries = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        content = "\n".join(
            f"{e.path}:{e.size}:{e.mtime_ns}" for e in sorted(entries, key=lambda e: e.path)
        ).encode()
    return hashlib.sha256(content).hexdigest()[:16]


def log_dataset(
    run_id: str,
    uri: str,
    *,
    name: str,
    context: str = "training",
    rows: dict[str, int] | None = None,
    source: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Log the dataset at ``uri`` as an input of run ``run_id`` (as ``mlflow.log_input``); returns its digest.

    ``source``: the URI to record (default ``uri``), e.g. ``synthetic:von-mises`` for data that
    rfdist generated into a machine-local folder: the record must mean the same on any machine.
    """
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest = dataset_digest(uri, storage_options)
    try:
        with warnings.catch_warnings():
            # MLflow registers its local artifact source twice and warns that a local path "can be
            # interpreted in multiple ways" (both are the same class): nothing a user can act on
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            recorded = resolve_dataset_source(source or uri)
    except Exception:  # no MLflow source type for this URI scheme
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        recorded = HTTPDatasetSource(source or uri)
    tags = {DATASET_CONTEXT_TAG: context, **{f"rows.{s}": str(n) for s, n in (rows or {}).items()}}
    dataset = Dataset(**MetaDataset(source=recorded, name=name, digest=digest).to_dict())
    entry = DatasetInput(dataset=dataset, tags=[InputTag(key=k, value=v) for k, v in tags.items()])
    mlflow.MlflowClient().log_inputs(run_id, datasets=[entry])
    return digest


def describe_version(
    client: Any, name: str, version: str, *, val_nll: float, dataset: str, digest: str, run_id: str
) -> None:
    """Tag a registered version with its val NLL, dataset digest and commit, and describe it."""
    commit = git_commit()
    tags = {"val_nll": f"{val_nll:.6g}", "dataset": dataset, "dataset_digest": digest, "run_id": run_id}
    if commit:
        tags["git_commit"] = commit
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(
        name,
        version,
        description=(
            f"val NLL {val_nll:.4f} on {dataset} (digest {digest})"
            + (f", commit {commit[:12]}" if commit else "")
            + f"; trained in run {run_id}."
        ),
    )


def dataset_uri(cfg: Any) -> str:
    """The dataset as the user named it: ``data.path`` as given, else ``synthetic:NAME``.

    Portable: a synthetic set's materialised folder is local to the machine that trained.
    """
    return cfg.data.path or f"synthetic:{cfg.data.synthetic}"


def describe_run(run_id: str, cfg: Any, prepared: Any) -> str:
    """Give run ``run_id`` a description and its dataset input; returns the dataset digest."""
    import mlflow

    spec = prepared.spec
    client = mlflow.MlflowClient()
    client.set_tag(
        run_id,
        RUN_NOTE_TAG,
        RUN_DESCRIPTION.format(name=cfg.name, d=spec.latent_dim, D=spec.data_dim, data=dataset_uri(cfg)),
    )
    name = cfg.data.synthetic or Path(prepared.path.rstrip("/")).name
    rows = dict(getattr(prepared.info, "rows", {}) or {})
    return log_dataset(
        run_id,
        prepared.path,
        name=name,
        rows=rows,
        source=dataset_uri(cfg),
        storage_options=cfg.data.storage_options,
    )
