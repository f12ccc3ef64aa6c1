"""Train a config in-process and save ``spec.json`` + ``state_<step>.pt`` snapshots every 250 steps.

    python scripts/train_snapshots.py OUT_DIR CONFIG [key=value ...]

For long CPU trainings that may have to stop early: any snapshot can be logged with
``scripts/log_checkpoint.py`` and evaluated with ``rfdist eval``. ``time_<step>.json`` holds the
training seconds up to that snapshot.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rfdist.config import load_config
from rfdist.core.builders import build_model
from rfdist.core.engine import fit
from rfdist.recipes.local import load_arrays


def main(argv: list[str]) -> int:
    out, cfg_path, overrides = Path(argv[0]), argv[1], argv[2:]
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    cfg = load_config(cfg_path, overrides)
    torch.manual_seed(cfg.seed)
    data = load_arrays(cfg)
    spec = cfg.model.spec(data.data_shape, cfg.seed)
    model = build_model(spec)
    (out / "spec.json").write_text(json.dumps(spec.to_dict()))
    start = time.perf_counter()

    def snapshot(step: int, metrics: dict[str, float]) -> None:
        if step % 50 == 0:
            print(
                step,
                f"{time.perf_counter() - start:.0f}s",
                {k: round(v, 3) for k, v in metrics.items()},
                flush=True,
            )
        if step % 250 == 0:
            torch.save(
                {k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"state_{step}.pt"
            )
            (out / f"time_{step}.json").write_text(json.dumps({"train_seconds": time.perf_counter() - start}))

    fit(
        model, data.train, steps=cfg.train.max_steps, batch_size=cfg.train.batch_size, lr=cfg.train.lr,
        options=cfg.loss_options(), grad_clip=cfg.train.grad_clip, seed=cfg.seed, callback=snapshot,
    )  # fmt: skip
    torch.save(model.state_dict(), out / "state.pt")
    (out / "time.json").write_text(json.dumps({"train_seconds": time.perf_counter() - start}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
