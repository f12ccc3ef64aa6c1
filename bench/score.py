"""Batch scoring throughput: `rfdist score` (Ray Data actor pool) vs a single-process loop.

    python bench/score.py [--rows 200000] [--shards 8] [--actors 2] [--json bench/results/score.json]

Logs a small von Mises-shaped flow (D=2, d=1) to a temporary sqlite MLflow store, writes a
``--rows`` test split in ``--shards`` Parquet shards, then times, in one run: (1) a plain loop in
this process (pyarrow batches → :func:`rfdist.recipes.score.score_table` → one Parquet file) and
(2) :func:`rfdist.recipes.score.score_dataset` on a local Ray (read, actor-pool ``map_batches``, write,
``_SUCCESS``), Ray start-up excluded. Prints rows/s for both and the ratio Ray / loop, and
writes them as JSON. On a shared machine compare the ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from rfdist import ModelSpec, build_model
    from rfdist.data.parquet import write_dataset
    from rfdist.data.reader import open_dataset
    from rfdist.recipes.score import score_dataset, score_table
    from rfdist.runtime.cluster import connect_or_start_ray
    from rfdist.tracking.models import load_flow, log_flow_model

    root = Path(tempfile.mkdtemp(prefix="rfdist-bench-score-"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("bench", artifact_location=str(root / "artifacts"))
    spec = ModelSpec(data_shape=(2,), latent_dim=1, flow_layers=4, flow_hidden=(64, 64), density_layers=2,
                     density_hidden=(32,))  # fmt: skip
    model = build_model(spec).eval()
    with mlflow.start_run(experiment_id=experiment):
        log_flow_model(model, spec, registered_model_name="bench")
    x = torch.randn(args.rows, 2, generator=torch.Generator().manual_seed(0)).numpy()
    data = str(root / "data")
    write_dataset(data, {"test": {"x": x, "label": np.arange(args.rows)}}, shard_rows=-(-args.rows // args.shards))

    # (1) one process: pyarrow batches → score_table → one Parquet file
    info = open_dataset(data)
    loaded = load_flow("models:/bench/latest")
    start = time.perf_counter()
    tables = []
    for path in info.splits["test"]:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=args.batch_size):
            tables.append(score_table(loaded.model, pa.Table.from_batches([batch]), features=None,
                                      dim=2, preprocess=loaded.preprocess, device="cpu"))  # fmt: skip
    pq.write_table(pa.concat_tables(tables), root / "loop.parquet")
    loop_s = time.perf_counter() - start

    # (2) Ray Data actor pool (Ray already up, so start-up is not timed)
    connect_or_start_ray(None, 4)
    start = time.perf_counter()
    result = score_dataset("models:/bench/latest", data, str(root / "ray-out"), tracking_uri=uri,
                           batch_size=args.batch_size, actors=args.actors, progress=False)  # fmt: skip
    ray_s = time.perf_counter() - start
    ray.shutdown()
    assert result.rows == args.rows

    records = [
        {"path": "single-process loop", "rows": args.rows, "seconds": loop_s, "rows_per_s": args.rows / loop_s},
        {"path": f"rfdist score ({args.actors} actors)", "rows": args.rows, "seconds": ray_s,
         "rows_per_s": args.rows / ray_s},
    ]  # fmt: skip
    print(f"{'path':<28} {'rows':>8} {'seconds':>8} {'rows/s':>10}")
    for r in records:
        print(f"{r['path']:<28} {r['rows']:>8} {r['seconds']:>8.2f} {r['rows_per_s']:>10.0f}")
    print(f"ratio Ray / loop (rows/s): {loop_s / ray_s:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"records": records, "ratio_ray_over_loop": loop_s / ray_s}, indent=2))


if __name__ == "__main__":
    main()
