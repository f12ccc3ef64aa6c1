"""Log a trained flow saved as ``spec.json`` + ``state.pt`` to MLflow, so ``rfdist eval`` can use it.

    python scripts/log_checkpoint.py runs/fmnist/spec.json runs/fmnist/state_500.pt \
        --config rfdist/presets/fashion-mnist-cpu.yaml --set train.mode=two_step --train-seconds 1234

Prints the model URI (``runs:/ID/model``). The config (with overrides) is logged as the run's
parameters, so the evaluation finds the preprocessing (``data.preprocess``, ``data.logit_lambda``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rfdist.config import load_config
from rfdist.core.builders import ModelSpec, build_model
from rfdist.tracking.models import log_flow_model, resolve_tracking_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("spec", type=Path)
    parser.add_argument("state", type=Path)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--train-seconds", type=float, default=None)
    parser.add_argument("--tracking-uri")
    parser.add_argument("--experiment", default="rfdist-paper")
    args = parser.parse_args(argv)
    import mlflow

    cfg = load_config(args.config, args.set)
    spec = ModelSpec.from_dict(json.loads(args.spec.read_text()))
    model = build_model(spec)
    model.load_state_dict(torch.load(args.state, map_location="cpu", weights_only=True))
    mlflow.set_tracking_uri(resolve_tracking_uri(args.tracking_uri))
    mlflow.set_experiment(args.experiment)
    with mlflow.start_run(run_name=cfg.name) as run:
        params = {k: str(v)[:500] for k, v in cfg.flat().items()}
        for i in range(0, len(params), 100):
            mlflow.log_params(dict(list(params.items())[i : i + 100]))
        mlflow.set_tag("rfdist.state_file", str(args.state))
        if args.train_seconds is not None:
            mlflow.log_metric("train_seconds", args.train_seconds)
        log_flow_model(model, spec)
    print(f"runs:/{run.info.run_id}/model")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
