"""The ``rfdist`` command line.

Every command turns bad input into one ``error: …`` line on stderr and a non-zero exit
(no traceback); ``--set key=value`` overrides any config key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from rfdist.cli._help import PlainCommand, PlainGroup
from rfdist.cli.data import data_app
from rfdist.cli.presets import presets_app

# Nothing at module level imports torch, Ray or MLflow: `rfdist --help`, `--version` and shell
# completion answer without them; each command imports what it needs when it runs.

app = typer.Typer(
    cls=PlainGroup,
    help="Rectangular normalizing flows: data, training, sweeps, evaluation and the model registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
)
app.add_typer(data_app, name="data")
app.add_typer(presets_app, name="presets")


def _version(value: bool) -> None:
    if value:
        from rfdist._dist import DIST_NAME, dist_version  # no torch: --version answers at once

        typer.echo(f"rfdist {dist_version()} ({DIST_NAME})")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Rectangular normalizing flows: data, training, sweeps, evaluation and the model registry."""


ConfigArg = Annotated[
    str | None,
    typer.Argument(
        help="YAML config file or preset name (see: rfdist presets list; default: built-in von-mises)."
    ),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override a config key: key=value.")
]
# One precedence for the MLflow store everywhere: --tracking-uri, else the config's tracking.uri
# (train, sweep), else MLFLOW_TRACKING_URI, else ./mlflow.db in the current folder.
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (wins over tracking.uri and MLFLOW_TRACKING_URI; default: ./mlflow.db).",
    ),
]


def _with_tracking(overrides: list[str] | None, tracking_uri: str | None) -> list[str] | None:
    """``--set`` overrides with ``--tracking-uri`` last (so it wins over the config and --set)."""
    if not tracking_uri:
        return overrides
    return [*(overrides or []), f"tracking.uri={json.dumps(tracking_uri)}"]  # quoted: values are YAML


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one error line and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _print_metrics(metrics: dict[str, float], json_out: Path | None) -> None:
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        typer.echo(f"{key:<{width}}  {value:.6g}")
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2))


def _load(config: str | None, overrides: list[str] | None) -> Any:
    """The validated config (torch is imported here, not when the CLI starts); bad config exits 2."""
    from rfdist.config import ConfigError, load_config

    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        fail(str(exc))


def _user_error(exc: Exception) -> bool:
    """Errors whose message is meant for the user (no traceback)."""
    from rfdist.config import ConfigError
    from rfdist.recipes.preflight import UnreachableError
    from rfdist.recipes.train import TrainingError

    return isinstance(
        exc, ConfigError | FloatingPointError | TrainingError | FileNotFoundError | UnreachableError
    ) or (type(exc).__name__ in ("DataError", "RayStartError"))


def _exit_code(exc: Exception) -> int:
    """2 for bad usage, config or data; 1 for a runtime failure (training, an unreachable service)."""
    from rfdist.recipes.preflight import UnreachableError
    from rfdist.recipes.train import TrainingError

    if isinstance(exc, FloatingPointError | TrainingError | UnreachableError):
        return 1
    # data storage unreachable, Ray not starting: runtime failures
    return 1 if type(exc).__name__ in ("StorageUnreachable", "RayStartError") else 2


def _tracking_ready(tracking_uri: str | None) -> None:
    """For short commands: bound MLflow's HTTP retries, probe the store; one line, exit 1."""
    from rfdist.recipes.preflight import UnreachableError, bound_mlflow_http, check_tracking
    from rfdist.tracking.models import resolve_tracking_uri

    bound_mlflow_http()
    try:
        check_tracking(resolve_tracking_uri(tracking_uri))
    except UnreachableError as exc:
        fail(str(exc), code=1)


@app.command(cls=PlainCommand)
def train(
    config: ConfigArg = None,
    set_: SetOpt = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Train in this process, without Ray/MLflow.")
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics as JSON.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Train again from scratch although this run has finished.")
    ] = False,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Train a rectangular flow from CONFIG on Ray Train, tracked in MLflow.

    Re-running resumes an unfinished run; a finished one is reported, not retrained (--force
    trains it again).
    """
    cfg = _load(config, _with_tracking(set_, tracking_uri))
    try:
        if local:
            from rfdist.recipes.local import run_local

            _, metrics = run_local(cfg)
            _print_metrics(metrics, json_out)
            return
        from rfdist.recipes.train import run_training
        from rfdist.tracking.models import redact_uri

        result = run_training(cfg, address=address, force=force)
    except Exception as exc:
        if _user_error(exc):
            fail(str(exc), code=_exit_code(exc))
        raise
    if result.already_finished:
        typer.echo(
            f"run {cfg.name!r} already finished at step {int(result.metrics['step'])} "
            f"(MLflow run {result.run_id}"
            + (f", {result.model_uri}" if result.model_uri else "")
            + "); nothing to do — `--force` trains it again from scratch"
        )
        return
    metrics = dict(result.metrics)
    _print_metrics(metrics, json_out)
    typer.echo(f"mlflow run       {result.run_id} ({redact_uri(result.tracking_uri)})")
    typer.echo(f"checkpoint       {result.checkpoint_path}")
    if result.model_version:
        aliases = f"aliases: {', '.join(result.aliases)}" if result.aliases else "no alias"
        typer.echo(
            f"registered       {cfg.registry.name} v{result.model_version} "
            f"({aliases}; models:/{cfg.registry.name}@latest is the newest version)"
        )


@app.command(cls=PlainCommand)
def sweep(
    config: ConfigArg = None,
    set_: SetOpt = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Sweep CONFIG's tune.space on Ray Tune (each trial a Ray Train run), tracked in MLflow.

    Prints a table of every trial (NLL, cost, why it stopped), registers the best trial's model
    with alias sweep-best. Re-running the same command resumes an interrupted sweep.
    """
    cfg = _load(config, _with_tracking(set_, tracking_uri))
    from rfdist.recipes.sweep import SweepInterrupted, run_sweep
    from rfdist.tracking.models import redact_uri

    try:
        result = run_sweep(cfg, address=address)
    except SweepInterrupted as exc:
        fail(str(exc), code=130)
    except Exception as exc:
        if _user_error(exc):
            fail(str(exc), code=_exit_code(exc))
        raise
    typer.echo(f"mlflow parent run  {result.parent_run_id} ({redact_uri(result.tracking_uri)})")
    typer.echo(f"summary            {result.summary_csv}")
    if result.best is None:
        fail("no trial completed; see the table above and the child runs in MLflow", code=1)
    typer.echo(
        f"best trial         {result.best.trial}  val/nll {result.best.val_nll:.4f}  "
        f"{result.best.s_per_step * 1000:.0f} ms/step"
    )
    typer.echo(f"registered         {result.model_name} v{result.model_version} (alias: sweep-best)")


models_app = typer.Typer(cls=PlainGroup, help="Look up and promote registered models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list", cls=PlainCommand)
def models_list(tracking_uri: TrackingOpt = None) -> None:
    """Registered models, their version counts and aliases."""
    from rfdist.tracking.models import list_models

    _tracking_ready(tracking_uri)
    try:
        rows = list_models(tracking_uri=tracking_uri)
    except Exception as exc:
        fail(f"cannot list models: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", code=1)
    if not rows:
        typer.echo("no registered models")
    for row in rows:
        aliases = ", ".join(f"{k}->v{v}" for k, v in sorted(row["aliases"].items()))
        typer.echo(f"{row['name']}  versions={row['versions']}  latest=v{row['latest_version']}  {aliases}")


@models_app.command("show", cls=PlainCommand)
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@ALIAS or NAME/VERSION.")],
    tracking_uri: TrackingOpt = None,
) -> None:
    """One model version: its run, source and metrics, as JSON."""
    from rfdist.tracking.models import get_model_record

    _tracking_ready(tracking_uri)
    try:
        record = get_model_record(ref, tracking_uri=tracking_uri)
    except Exception as exc:
        fail(f"cannot find model {ref!r}: {str(exc).splitlines()[0]}")
    typer.echo(json.dumps(record.as_dict(), indent=2, default=str))


@models_app.command("promote", cls=PlainCommand)
def models_promote(name: str, version: str, alias: str, tracking_uri: TrackingOpt = None) -> None:
    """Point ALIAS of model NAME at VERSION."""
    from rfdist.tracking.models import promote

    _tracking_ready(tracking_uri)
    try:
        promote(name, version, alias, tracking_uri=tracking_uri)
    except Exception as exc:
        fail(f"cannot promote {name} v{version} to {alias!r}: {str(exc).splitlines()[0]}")
    typer.echo(f"{name}@{alias} -> v{version}")


@app.command("config", cls=PlainCommand)
def show_config(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Validate CONFIG (with overrides) and print the resolved YAML."""
    import yaml

    cfg = _load(config, set_)
    typer.echo(yaml.safe_dump(cfg.model_dump(), sort_keys=False))


# --- jobs on a Ray cluster: `rfdist submit`, `rfdist jobs list|logs|stop|status`
from rfdist.cli.jobs import SUBMIT_CONTEXT, jobs_app, submit  # noqa: E402

app.command("submit", cls=PlainCommand, context_settings=SUBMIT_CONTEXT)(submit)
app.add_typer(jobs_app, name="jobs")


@app.command("eval", cls=PlainCommand)
def eval_model(
    model_uri: Annotated[
        str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/NAME (NAME: the run's registry.name, or model when it had none).")
    ],
    data: Annotated[str, typer.Option("--data", help="Dataset folder, s3:// prefix, or synthetic:NAME.")],
    ood_data: Annotated[str | None, typer.Option("--ood-data", help="Out-of-distribution dataset.")] = None,
    features: Annotated[
        str, typer.Option(help="Fréchet features: auto | raw | lenet | inception:PATH.")
    ] = "auto",
    max_rows: Annotated[int | None, typer.Option(help="Score at most this many test rows.")] = None,
    ood_train_rows: Annotated[int, typer.Option(help="Train rows per dataset for the OOD threshold.")] = 1000,
    fd_samples: Annotated[int, typer.Option(help="Samples for the Fréchet distance (0: skip it).")] = 5000,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", min=1, help="Rows per exact-likelihood batch (memory: d tangents a row)."
        ),
    ] = 256,
    preprocess: Annotated[
        str | None, typer.Option(help="none | logit | standardize (default: the run's).")
    ] = None,
    seed: int = 0,
    tracking_uri: TrackingOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics as JSON.")] = None,
) -> None:
    """Evaluate a logged model: exact log-likelihoods, reconstruction, Fréchet distance, OOD."""
    from rfdist.recipes.evaluate import EvalOptions, run_eval

    _tracking_ready(tracking_uri)

    opts = EvalOptions(
        data=data, ood_data=ood_data, features=features, max_rows=max_rows, ood_train_rows=ood_train_rows,
        fd_samples=fd_samples, preprocess=preprocess, seed=seed, batch_size=batch_size,
    )  # fmt: skip
    try:
        result, run_id = run_eval(model_uri, opts, tracking_uri=tracking_uri, json_out=json_out)
    except Exception as exc:
        if _user_error(exc) or isinstance(exc, ValueError | LookupError):
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, code=_exit_code(exc))
        if isinstance(exc, RuntimeError):  # a failure while evaluating (torch, memory): not bad input
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, code=1)
        if type(exc).__module__.startswith("mlflow"):
            fail(f"cannot load model {model_uri!r}: {str(exc).splitlines()[0]}")
        raise
    _print_metrics(result.metrics, None)
    typer.echo(f"mlflow run       {run_id}")


@app.command("score", cls=PlainCommand)
def score(
    model_uri: Annotated[
        str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/NAME (NAME: the run's registry.name, or model when it had none).")
    ],
    data: Annotated[
        str, typer.Option("--data", help="Dataset folder or s3:// prefix (rfdist Parquet layout).")
    ],
    out: Annotated[str, typer.Option("--out", help="Output folder or s3:// prefix (Parquet + _SUCCESS).")],
    split: Annotated[str, typer.Option(help="Split to score.")] = "test",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per scoring batch.")] = 1024,
    actors: Annotated[
        int | None, typer.Option(help="Scoring actors (default: one per GPU, else CPUs/2).")
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Score a dataset split with a logged model on Ray Data: log_prob, reconstruction_error, latent."""
    from rfdist.recipes.score import score_dataset

    try:
        result = score_dataset(
            model_uri, data, out, split=split, address=address, tracking_uri=tracking_uri,
            batch_size=batch_size, actors=actors,
        )  # fmt: skip
    except Exception as exc:
        if _user_error(exc):
            fail(str(exc), code=_exit_code(exc))
        if type(exc).__module__.startswith("mlflow") or type(exc).__name__ == "ModelIntegrityError":
            fail(f"cannot load model {model_uri!r}: {str(exc).splitlines()[0]}", code=1)
        raise
    typer.echo(f"scored {result.rows} rows -> {result.out}")


@app.command("serve", cls=PlainCommand)
def serve_model(
    model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/NAME.")],
    replicas: Annotated[int, typer.Option(help="Replicas (the minimum with --max-replicas).")] = 1,
    max_replicas: Annotated[
        int | None, typer.Option(help="Autoscale between --replicas and this many replicas.")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Requests batched into one predict call.")] = 32,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Serve a logged model on Ray Serve: POST rows to /invocations, answers {"log_prob": [...]}."""
    import time

    from rfdist.recipes.serve import LOOPBACK, ServeOptions, deploy

    if replicas < 1 or (max_replicas is not None and max_replicas < replicas):
        fail(f"--replicas {replicas} / --max-replicas {max_replicas}: expected 1 <= replicas <= max-replicas")
    if max_batch_size < 1:
        fail(f"--max-batch-size must be >= 1 (got {max_batch_size})")
    autoscaling = (
        {"min_replicas": replicas, "max_replicas": max_replicas, "initial_replicas": replicas}
        if max_replicas is not None
        else None
    )
    options = ServeOptions(
        host=host, port=port, num_replicas=replicas, autoscaling=autoscaling, max_batch_size=max_batch_size
    )
    if host not in LOOPBACK:
        typer.echo(f"[rfdist] warning: serving on {host}: anyone who reaches port {port} can query the model", err=True)
    try:
        url = deploy(model_uri, options, tracking_uri=tracking_uri, address=address)
    except Exception as exc:
        if _user_error(exc):
            fail(str(exc))
        if type(exc).__module__.startswith("mlflow") or type(exc).__name__ == "ModelIntegrityError":
            fail(f"cannot load model {model_uri!r}: {str(exc).splitlines()[0]}", code=1)
        raise
    typer.echo(f"[rfdist] serving {model_uri} at {url} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
