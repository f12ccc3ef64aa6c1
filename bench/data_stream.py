"""Streaming throughput: rfdist's training path vs a raw pyarrow scan of the same Parquet files.

    python bench/data_stream.py --gb 0.25 [--json bench/results/data_stream.json]
        [--dir /tmp/rfdist-bench-stream] [--object-store-mb 1024] [--repeats 2]

Writes the same MNIST-shaped random pixels twice, once per column format (reused on later
runs): ``uint8`` (``arrow.fixed_shape_tensor<uint8>[1,28,28]``, what ``rfdist data make``
writes) and ``float32`` (the older ``fixed_size_list<float32>[784]`` layout); ``--gb`` is the
float32 size. For each format it times, warm and interleaved, best of ``--repeats``:
(1) ``pyarrow.dataset`` scanning the shards into (N, 784) numpy batches of the stored dtype;
(2) ``rfdist training path``: an epoch of what ``datasets.ray_datasets`` hands the workers — held in
the object store when under the materialise limit (256 MiB, at most half the store; the one-off
read is ``materialize_s``), else streamed — through ``iter_torch_batches`` with the worker's
options (``reader.stream_options``), rows as stored; (3) ``rfdist streaming read``:
``reader.ray_dataset`` (built once per run, as training does) streamed from Parquet every epoch;
(4) Ray Data's ``read_parquet`` with its defaults (the DataSourceV2 reader), read alone.
Records: ``path``, ``format``, ``rows_per_s``, ``mb_per_s`` (bytes of pixels moved),
``ratio_vs_pyarrow`` (vs (1) on the same files) and ``peak_rss_mb`` (this process plus its
children, i.e. the local Ray instance, sampled every 50 ms during the pass). With
``--object-store-mb`` below the dataset size it shows streaming larger than the object store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

PIXELS = 784
FORMATS = {"uint8": 1, "float32": 4}


def make(root: Path, gb: float, formats: list[str]) -> int:
    """Both formats under ``root/uint8`` and ``root/float32`` (the same pixels); returns the rows."""
    from rfdist.data.parquet import MANIFEST, write_dataset

    rows = int(gb * 1e9 / (PIXELS * 4))
    rng = np.random.default_rng(0)
    for name in formats:
        target = root / name
        manifest = target / MANIFEST
        if manifest.exists() and json.loads(manifest.read_text())["splits"]["train"]["rows"] == rows:
            continue
        x = rng.integers(0, 256, size=(rows, 1, 28, 28), dtype=np.uint8)  # same seed → same pixels
        rng = np.random.default_rng(0)
        data = x if name == "uint8" else x.astype(np.float32)
        write_dataset(str(target), {"train": {"x": data}}, shape=(1, 28, 28), shard_rows=10_000)
        del x, data
    return rows


class PeakRss:
    """Peak resident memory of this process and its children (a local Ray), sampled in a thread."""

    def __init__(self, every: float = 0.05) -> None:
        import psutil

        self.process, self.every, self.peak = psutil.Process(), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        import psutil

        total = 0
        for proc in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def scan_pyarrow(info, batch_size: int) -> int:
    import pyarrow.dataset as pads

    from rfdist.data.reader import arrow_to_numpy

    rows = 0
    dataset = pads.dataset(info.splits["train"], filesystem=info.filesystem, format="parquet")
    for batch in dataset.to_batches(columns=["x"], batch_size=batch_size):
        rows += arrow_to_numpy(batch, None, info.data_dim, dtype=None).shape[0]
    return rows


def _once(key: str, build: Callable[[], object]) -> object:
    """A dataset built once per run and re-executed every epoch, as ``datasets.ray_datasets`` does."""
    if key not in _BUILT:
        _BUILT[key] = build()
    return _BUILT[key]


def scan_rfdist(info, batch_size: int) -> int:
    import torch

    from rfdist.runtime.datasets import ray_dataset, stream_options

    rows = 0
    ds = _once(f"stream:{info.uri}", lambda: ray_dataset(info, "train"))
    for batch in ds.iter_torch_batches(batch_size=batch_size, **stream_options(torch.device("cpu"))):
        rows += batch["x"].shape[0]
    return rows


def scan_ray_read(info, batch_size: int) -> int:
    """Ray Data's default reader (``read_parquet`` with nothing set), for comparison."""
    import ray.data

    rows = 0
    ds = _once(
        f"default:{info.uri}",
        lambda: ray.data.read_parquet(info.splits["train"], filesystem=info.filesystem),
    )
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        rows += batch.num_rows
    return rows


def scan_rfdist_train(info, batch_size: int) -> int:
    """The training path's epoch: what ``datasets.ray_datasets`` hands the workers, iterated as they do.

    Under the materialise limit the dataset is read once per run (``_MATERIALIZED``, timed apart)
    and every epoch iterates the object store; above it, every epoch streams from Parquet.
    """
    import torch

    from rfdist.runtime.datasets import ray_dataset, stream_options

    ds = _MATERIALIZED.get(info.uri) or ray_dataset(info, "train")
    rows = 0
    for batch in ds.iter_torch_batches(batch_size=batch_size, **stream_options(torch.device("cpu"))):
        rows += batch["x"].shape[0]
    return rows


_MATERIALIZED: dict[str, object] = {}
_BUILT: dict[str, object] = {}

PATHS: dict[str, Callable] = {
    "pyarrow.dataset": scan_pyarrow,
    "rfdist training path (epoch)": scan_rfdist_train,
    "rfdist streaming read (ray_dataset)": scan_rfdist,
    "ray.data read_parquet, defaults": scan_ray_read,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=0.25, help="float32 dataset size in GB (default 0.25)")
    parser.add_argument("--dir", default="/tmp/rfdist-bench-stream", help="where the datasets are written")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per path (best is kept)")
    parser.add_argument("--object-store-mb", type=int, default=1024)
    parser.add_argument("--formats", default="uint8,float32")
    parser.add_argument("--json", default=None, help="write the records here")
    args = parser.parse_args()

    import ray

    from rfdist.data.reader import open_dataset
    from rfdist.runtime.datasets import MATERIALIZE_BYTES, materialize_limit, ray_dataset

    formats = args.formats.split(",")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"--formats: unknown {unknown[0]!r}; expected some of {sorted(FORMATS)}")
    rows = make(Path(args.dir), args.gb, formats)
    ray.init(
        address="local",
        num_cpus=max(2, os.cpu_count() or 2),
        include_dashboard=False,
        logging_level="ERROR",
        object_store_memory=args.object_store_mb * 1024**2,
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    DataContext.get_current().print_on_execution_start = False
    records = []
    for fmt in formats:
        info = open_dataset(str(Path(args.dir) / fmt))
        size = rows * info.data_dim * info.itemsize
        materialized = size <= materialize_limit(MATERIALIZE_BYTES)
        materialize_s = None
        if materialized:  # as datasets.ray_datasets does, once per run
            start = time.perf_counter()
            _MATERIALIZED[info.uri] = ray_dataset(info, "train").materialize()
            materialize_s = time.perf_counter() - start
        best: dict[str, dict] = {}
        for path, scan in PATHS.items():  # warm-up: page cache, Ray's workers
            assert scan(info, args.batch_size) == rows, path
        for _ in range(args.repeats):  # interleaved timed passes
            for path, scan in PATHS.items():
                with PeakRss() as rss:
                    start = time.perf_counter()
                    seen = scan(info, args.batch_size)
                    seconds = time.perf_counter() - start
                assert seen == rows, (path, seen, rows)
                record = best.get(path)
                if record is None or seconds < record["seconds"]:
                    best[path] = {"path": path, "format": fmt, "rows": rows, "seconds": seconds}
                best[path]["peak_rss_mb"] = max(best[path].get("peak_rss_mb", 0), rss.peak / 2**20)
        base = best["pyarrow.dataset"]["seconds"]
        for record in best.values():
            record["rows_per_s"] = rows / record["seconds"]
            record["mb_per_s"] = rows * PIXELS * FORMATS[fmt] / 1e6 / record["seconds"]
            record["bytes_moved"] = rows * PIXELS * FORMATS[fmt]
            record["ratio_vs_pyarrow"] = base / record["seconds"]
            record["object_store_mb"] = args.object_store_mb
            if record["path"].startswith("rfdist training"):
                record["materialized"] = materialized
                record["materialize_s"] = materialize_s
            records.append(record)
        _MATERIALIZED.clear()
        _BUILT.clear()
    ray.shutdown()
    print(f"{'path':<38} {'format':>7} {'rows/s':>10} {'MB/s':>8} {'ratio':>6} {'peak RSS MB':>11}")
    for r in records:
        print(
            f"{r['path']:<38} {r['format']:>7} {r['rows_per_s']:>10.0f} {r['mb_per_s']:>8.1f} "
            f"{r['ratio_vs_pyarrow']:>6.2f} {r['peak_rss_mb']:>11.0f}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
