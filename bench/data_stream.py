"""Streaming throughput: the Ray Data path vs a raw pyarrow.dataset scan of the same Parquet files.

    python bench/data_stream.py --gb 1.0 [--json bench/results/data_stream.json] [--dir /tmp/rfdist-bench]

Writes an MNIST-shaped dataset (D=784 float32 rows, 10k-row shards) of about ``--gb`` GB once
(reused on later runs), then times, in one run: (1) ``pyarrow.dataset`` scanning the shards into
(N, 784) float32 numpy batches; (2) rfdist's Ray path (``read_parquet`` → ``map_batches`` to an
(N, D) tensor column → ``iter_torch_batches``), the way a Train worker consumes it. Prints a table
and writes JSON records with rows/s, MB/s and the ratio Ray / pyarrow.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROW_BYTES = 784 * 4


def make(root: Path, gb: float) -> int:
    from rfdist.data.parquet import MANIFEST, write_dataset

    rows = int(gb * 1e9 / ROW_BYTES)
    if (root / MANIFEST).exists() and json.loads((root / MANIFEST).read_text())["splits"]["train"][
        "rows"
    ] == rows:
        return rows
    rng = np.random.default_rng(0)
    chunk = 50_000
    x = np.empty((rows, 1, 28, 28), dtype=np.float32)
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        x[start:stop] = rng.integers(0, 256, size=(stop - start, 1, 28, 28)).astype(np.float32)
    write_dataset(str(root), {"train": {"x": x}}, shape=(1, 28, 28), shard_rows=10_000, progress=True)
    return rows


def bench_pyarrow(info, batch_size: int) -> tuple[int, float]:
    import pyarrow.dataset as pads

    from rfdist.data.reader import arrow_to_numpy

    start = time.perf_counter()
    rows = 0
    dataset = pads.dataset(info.splits["train"], filesystem=info.filesystem, format="parquet")
    for batch in dataset.to_batches(columns=["x"], batch_size=batch_size):
        rows += arrow_to_numpy(batch, None, info.data_dim).shape[0]
    return rows, time.perf_counter() - start


def bench_ray(info, batch_size: int) -> tuple[int, float]:

    from rfdist.data.reader import ray_dataset

    for _ in ray_dataset(info, "train").limit(20_000).iter_batches(batch_size=batch_size):
        pass  # warm-up: start Ray's read/map workers outside the timed pass
    ds = ray_dataset(info, "train")
    start = time.perf_counter()
    rows = 0
    for batch in ds.iter_torch_batches(batch_size=batch_size):
        rows += batch["x"].shape[0]
    elapsed = time.perf_counter() - start
    del ds
    return rows, elapsed


def bench_ray_raw(info, batch_size: int) -> tuple[int, float]:
    """Ray Data's floor: read_parquet → pyarrow batches, no conversion to tensors."""
    import ray

    start = time.perf_counter()
    rows = 0
    for batch in ray.data.read_parquet(info.splits["train"], filesystem=info.filesystem).iter_batches(
        batch_size=batch_size, batch_format="pyarrow"
    ):
        rows += batch.num_rows
    return rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=0.5, help="dataset size in GB (default 0.5)")
    parser.add_argument("--dir", default="/tmp/rfdist-bench-stream", help="where the dataset is written")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--json", default=None, help="write the records here")
    args = parser.parse_args()

    import ray

    from rfdist.data.reader import open_dataset

    rows = make(Path(args.dir), args.gb)
    info = open_dataset(args.dir)
    records = []
    raw_rows, raw_s = bench_pyarrow(info, args.batch_size)
    records.append({"path": "pyarrow.dataset", "rows": raw_rows, "seconds": raw_s})
    ray.init(
        num_cpus=max(2, os.cpu_count() or 2),
        include_dashboard=False,
        logging_level="ERROR",
        object_store_memory=1024**3,
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    ray_rows, ray_s = bench_ray(info, args.batch_size)
    records.append({"path": "ray.data iter_torch_batches", "rows": ray_rows, "seconds": ray_s})
    raw_ray_rows, raw_ray_s = bench_ray_raw(info, args.batch_size)
    records.append({"path": "ray.data read only (floor)", "rows": raw_ray_rows, "seconds": raw_ray_s})
    ray.shutdown()
    assert raw_rows == ray_rows == raw_ray_rows == rows, (raw_rows, ray_rows, raw_ray_rows, rows)
    for record in records:
        record["rows_per_s"] = record["rows"] / record["seconds"]
        record["mb_per_s"] = record["rows"] * ROW_BYTES / 1e6 / record["seconds"]
        record["gb"] = rows * ROW_BYTES / 1e9
    for record in records[1:]:
        record["ratio_vs_pyarrow"] = record["rows_per_s"] / records[0]["rows_per_s"]
    print(f"{'path':<30} {'rows':>10} {'seconds':>9} {'rows/s':>12} {'MB/s':>9}")
    for r in records:
        print(
            f"{r['path']:<30} {r['rows']:>10} {r['seconds']:>9.2f} {r['rows_per_s']:>12.0f} {r['mb_per_s']:>9.1f}"
        )
    print(f"ratio Ray / pyarrow: {records[1]['ratio_vs_pyarrow']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
