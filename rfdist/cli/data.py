"""``rfdist data make|validate``: write datasets atomically, check them, one-line errors."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from rfdist.cli._help import PlainCommand, PlainGroup
from rfdist.data.errors import DataError, StorageUnreachable

data_app = typer.Typer(cls=PlainGroup, help="Make and validate Parquet datasets.", no_args_is_help=True)


def _fail(message: str, code: int = 2) -> None:
    """One ``error:`` line; exit 2 for input the user must change, 1 for a runtime failure."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


StorageOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        help="KEY=VALUE for the storage filesystem (repeatable), e.g. client=fsspec, endpoint_url=…, project=…",
    ),
]


def _storage_options(items: list[str] | None) -> dict[str, Any] | None:
    """``--storage-option KEY=VALUE`` items as a dict (values parsed as YAML: numbers, booleans)."""
    import yaml

    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--storage-option expects KEY=VALUE, got {item!r}")
        options[key.strip()] = yaml.safe_load(value) if value else ""
    return options or None


def _moments(rows, chunk: int = 4096):
    """Per-feature mean and std of ``rows`` (N, D) in float64, a chunk at a time (big image sets)."""
    import numpy as np

    total = np.zeros(rows.shape[1])
    squares = np.zeros(rows.shape[1])
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk].astype(np.float64)
        total += part.sum(0)
        squares += (part * part).sum(0)
    mean = total / len(rows)
    return mean, np.sqrt(np.maximum(squares / len(rows) - mean * mean, 0.0))


@data_app.command("make", cls=PlainCommand)
def make(
    name: Annotated[
        str,
        typer.Argument(
            help="von-mises | sphere | digits | mnist | fashion-mnist | *-shape | shapes64 | patches64"
        ),
    ],
    out: Annotated[str, typer.Option("--out", help="Folder or s3://bucket/prefix to write.")],
    rows: Annotated[int | None, typer.Option(help="Training rows (synthetic) / cap (real data).")] = None,
    val_rows: Annotated[
        int | None,
        typer.Option(
            "--val-rows", help="val size (MNIST/Fashion-MNIST: drawn from the 60,000; default 5,000)."
        ),
    ] = None,
    shard_rows: Annotated[int, typer.Option("--shard-rows", help="Rows per Parquet shard.")] = 50_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    storage_option: StorageOpt = None,
) -> None:
    """Write the train/val/test shards of dataset NAME to --out (atomically)."""
    import numpy as np

    from rfdist.data.parquet import write_dataset
    from rfdist.data.sources import generate

    try:
        generated = generate(name, rows=rows, seed=seed, val_rows=val_rows)
        train = generated.splits["train"]["x"].reshape(len(generated.splits["train"]["x"]), -1)
        mean, std = _moments(train)
        stats = {"mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist()}
        manifest = write_dataset(
            out,
            generated.splits,
            shape=generated.shape,
            shard_rows=shard_rows,
            extra={"name": name, "seed": seed, "stats": stats, **generated.extra},
            progress=True,
            storage_options=_storage_options(storage_option),
        )
    except DataError as exc:
        _fail(str(exc), 1 if isinstance(exc, StorageUnreachable) else 2)
    counts = ", ".join(f"{s}={e['rows']}" for s, e in manifest["splits"].items())
    typer.echo(f"wrote {name} to {out}: {counts}; shape {generated.shape}")


@data_app.command("validate", cls=PlainCommand)
def validate(
    uri: Annotated[str, typer.Argument(help="Folder or s3://bucket/prefix.")],
    features: Annotated[
        str | None, typer.Option(help="Comma-separated feature columns (a user's table).")
    ] = None,
    storage_option: StorageOpt = None,
) -> None:
    """Check a dataset; exit 0 only when it is usable."""
    from rfdist.data.validate import validate_dataset

    report = validate_dataset(
        uri,
        features=features.split(",") if features else None,
        storage_options=_storage_options(storage_option),
    )
    if not report.ok:
        for problem in report.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1 if report.unreachable else 2)
    rows = ", ".join(f"{s}={n}" for s, n in report.rows.items())
    typer.echo(f"ok: {uri}  rows {rows}  D={report.data_dim}  shape={report.shape}  bytes={report.bytes}")


@data_app.command("import", cls=PlainCommand)
def import_(
    table: Annotated[
        str, typer.Argument(help="A Parquet or CSV file, or a folder of them (local or a storage URI).")
    ],
    out: Annotated[str, typer.Option("--out", help="Folder or storage URI to write the dataset to.")],
    features: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated numeric feature columns (default: every numeric column but the label and id)."
        ),
    ] = None,
    label: Annotated[str | None, typer.Option(help="An integer class column to keep as the label.")] = None,
    val_frac: Annotated[float, typer.Option("--val-frac", help="Fraction of rows for val.")] = 0.1,
    test_frac: Annotated[
        float, typer.Option("--test-frac", help="Fraction of rows for test (0: none).")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the row split.")] = 0,
    shard_rows: Annotated[int, typer.Option("--shard-rows", help="Rows per Parquet shard.")] = 50_000,
    storage_option: StorageOpt = None,
) -> None:
    """Import your own table as a train/val/test dataset at --out (streamed; atomic)."""
    from rfdist.data.tables import import_table

    try:
        manifest = import_table(
            table,
            out,
            features=[f.strip() for f in features.split(",") if f.strip()] if features else None,
            label=label,
            val_frac=val_frac,
            test_frac=test_frac,
            seed=seed,
            shard_rows=shard_rows,
            storage_options=_storage_options(storage_option),
        )
    except DataError as exc:
        _fail(str(exc), 1 if isinstance(exc, StorageUnreachable) else 2)
    counts = ", ".join(f"{s}={e['rows']}" for s, e in manifest["splits"].items())
    typer.echo(f"wrote {table} to {out}: {counts}; features {','.join(manifest['features'])}")
