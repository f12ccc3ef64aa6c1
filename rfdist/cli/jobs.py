"""``rfdist submit`` and ``rfdist jobs list|logs|stop``: the command-line face of :mod:`rfdist.recipes.submit`.

Registered in :mod:`rfdist.cli.main` with ``app.command("submit", …)(submit)`` and
``app.add_typer(jobs_app, name="jobs")``. Ray is imported only when a command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from rfdist.cli._help import PlainCommand, PlainGroup
from rfdist.recipes.submit import EXIT_CODES, Redactor, SubmitError

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray dashboard (Jobs API) address, e.g. http://127.0.0.1:8265; wins over the "
        "environment (default: RAY_API_SERVER_ADDRESS, else an http RAY_ADDRESS).",
    ),
]

jobs_app = typer.Typer(
    cls=PlainGroup, help="Ray jobs on a cluster: list, logs, status, stop.", no_args_is_help=True
)


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {Redactor()(message)}", err=True)
    raise typer.Exit(code)


def _note(message: str) -> None:
    typer.echo(f"note: {message}", err=True)


def _client(address: str | None):
    from rfdist.recipes.submit import connect, resolve_address

    try:
        resolved = resolve_address(address)
        client = connect(resolved, warn=lambda m: typer.echo(f"warning: {m}", err=True))
    except SubmitError as exc:
        _fail(str(exc))
    typer.echo(f"cluster: {resolved}", err=True)  # the address actually used (--address wins)
    return resolved, client


SUBMIT_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


SetOpt = Annotated[
    list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override a config key: key=value.")
]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Follow the logs; exit with the job's status.")]
ValidateOpt = Annotated[
    bool, typer.Option("--validate/--no-validate", help="Validate the config here before submitting.")
]
InstallDepsOpt = Annotated[
    bool,
    typer.Option("--install-deps", help="pip-install the project's dependencies in the job (real clusters)."),
]
ForwardCredentialsOpt = Annotated[
    bool,
    typer.Option(
        "--forward-credentials",
        help="Also copy AWS_*/MLflow credentials into the job (stored in its runtime_env on the "
        "cluster; prefer the cluster's own secrets).",
    ),
]
WorkingDirOpt = Annotated[
    Path | None, typer.Option(help="Project root to upload (default: found from the current folder).")
]
JobIdOpt = Annotated[str | None, typer.Option("--job-id", help="Submission id (default: generated).")]


def submit(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="train | sweep | eval | score")],
    target: Annotated[
        str, typer.Argument(help="CONFIG file or preset name (train, sweep), or MODEL_URI (eval, score).")
    ],
    address: AddressOpt = None,
    set_: SetOpt = None,
    wait: WaitOpt = False,
    validate: ValidateOpt = True,
    install_deps: InstallDepsOpt = False,
    forward_credentials: ForwardCredentialsOpt = False,
    working_dir: WorkingDirOpt = None,
    job_id: JobIdOpt = None,
) -> None:
    """Submit "rfdist KIND TARGET" as a Ray job; arguments after the options go to the job.

    Examples:

    \b
    rfdist submit train von-mises --address http://127.0.0.1:8265 --set scaling.num_workers=2 --wait
    rfdist submit eval models:/von-mises@champion --address http://127.0.0.1:8265 --data s3://bucket/vm
    """
    from rfdist.config import ConfigError
    from rfdist.recipes.submit import build_job, resolve_address

    redact = Redactor()
    try:
        resolved = resolve_address(address)
        spec = build_job(
            kind,
            target,
            overrides=set_,
            extra_args=list(ctx.args),
            address=resolved,
            working_dir=working_dir,
            validate=validate,
            install_deps=install_deps,
            forward_credentials=forward_credentials,
            submission_id=job_id,
        )
    except (ConfigError, SubmitError) as exc:
        _fail(str(exc))
    for note in spec.notes:
        _note(redact(note))
    if forward_credentials:
        _note("forwarding credentials into the job's runtime_env (values hidden)")
    resolved, client = _client(resolved)
    job = _submit_job(client, resolved, spec)
    typer.echo(f"submitted {job} to {resolved}")
    typer.echo(f"entrypoint  {redact(spec.entrypoint)}")
    typer.echo(f"env         {', '.join(spec.forwarded) or '(none)'}")
    if not wait:
        typer.echo(f"follow with: rfdist jobs logs {job} --address {resolved} --follow")
        return
    _follow_job(client, job, resolved, redact)


def _submit_job(client, address: str, spec) -> str:
    """Submit ``spec`` through ``client``; returns the job id (a refusal is one ``error:`` line)."""
    from rfdist.recipes.submit import cluster_errors

    try:
        with cluster_errors(address):
            return client.submit_job(
                entrypoint=spec.entrypoint,
                runtime_env=spec.runtime_env,
                submission_id=spec.submission_id,
                metadata=spec.metadata,
            )
    except SubmitError as exc:
        _fail(str(exc))
    except RuntimeError as exc:  # the Jobs API refused it (e.g. upload too large)
        _fail(f"submitting to {address} failed: {str(exc).splitlines()[0]}")


def _follow_job(client, job: str, address: str, redact: Redactor) -> None:
    """Stream the job's logs until it ends; exit with its status (Ctrl-C detaches, exit 130)."""
    from rfdist.recipes.submit import follow

    try:
        status = follow(client, job, lambda text: (sys.stdout.write(text), sys.stdout.flush()), redact)
    except KeyboardInterrupt:
        typer.echo(
            f"\ndetached; the job keeps running (rfdist jobs stop {job} --address {address})", err=True
        )
        raise typer.Exit(130) from None
    typer.echo(f"job {job} {status}")
    raise typer.Exit(EXIT_CODES.get(status, 1))


@jobs_app.command("list", cls=PlainCommand)
def jobs_list(address: AddressOpt = None) -> None:
    """Jobs on the cluster, newest first: id, status, start time, entrypoint."""
    import datetime

    resolved, client = _client(address)
    redact = Redactor()
    from rfdist.recipes.submit import cluster_errors, status_name

    with cluster_errors(resolved):
        jobs = client.list_jobs()
    jobs.sort(key=lambda j: j.start_time or 0, reverse=True)
    if not jobs:
        typer.echo("no jobs")
    for job in jobs:
        started = (
            datetime.datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
            if job.start_time
            else "-"
        )
        ident = job.submission_id or job.job_id
        typer.echo(f"{ident}  {status_name(job.status):<9}  {started}  {redact(job.entrypoint or '')}")


@jobs_app.command("logs", cls=PlainCommand)
def jobs_logs(
    job_id: Annotated[str, typer.Argument(help="Submission id.")],
    address: AddressOpt = None,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep following until the job ends.")
    ] = False,
) -> None:
    """A job's driver output (stdout and stderr); with --follow, exit with its status."""
    from rfdist.recipes.submit import cluster_errors, follow

    resolved, client = _client(address)
    redact = Redactor()
    try:
        with cluster_errors(resolved):
            if follow_:
                status = follow(client, job_id, lambda t: (sys.stdout.write(t), sys.stdout.flush()), redact)
                typer.echo(f"job {job_id} {status}")
                raise typer.Exit(EXIT_CODES.get(status, 1))
            typer.echo(redact(client.get_job_logs(job_id)), nl=False)
    except typer.Exit:
        raise
    except SubmitError as exc:
        _fail(str(exc))
    except RuntimeError as exc:
        _fail(f"no logs for job {job_id!r} at {resolved}: {str(exc).splitlines()[0]}")


@jobs_app.command("stop", cls=PlainCommand)
def jobs_stop(
    job_id: Annotated[str, typer.Argument(help="Submission id.")], address: AddressOpt = None
) -> None:
    """Ask the cluster to stop a job."""
    from rfdist.recipes.submit import cluster_errors

    resolved, client = _client(address)
    try:
        with cluster_errors(resolved):
            stopped = client.stop_job(job_id)
    except SubmitError as exc:
        _fail(str(exc))
    except RuntimeError as exc:
        _fail(f"cannot stop job {job_id!r} at {resolved}: {str(exc).splitlines()[0]}")
    typer.echo(f"{job_id} {'stopping' if stopped else 'was not running'}")


@jobs_app.command("status", cls=PlainCommand)
def jobs_status(
    job_id: Annotated[str, typer.Argument(help="Submission id.")], address: AddressOpt = None
) -> None:
    """A job's status; the exit code follows it (0 succeeded, 1 failed, 3 stopped, 4 not finished)."""
    from rfdist.recipes.submit import cluster_errors, status_name

    resolved, client = _client(address)
    try:
        with cluster_errors(resolved):
            status = status_name(client.get_job_status(job_id))
    except SubmitError as exc:
        _fail(str(exc))
    except RuntimeError as exc:
        _fail(f"no job {job_id!r} at {resolved}: {str(exc).splitlines()[0]}")
    typer.echo(status)
    raise typer.Exit(EXIT_CODES.get(status, 4))
