"""The picture logged at every checkpoint: drawn without touching the training RNG stream."""

from __future__ import annotations

import torch

from rfdist.core.builders import ModelSpec, build_model
from rfdist.eval.plots import model_image


def test_checkpoint_picture_leaves_the_rng_and_model_untouched() -> None:
    spec = ModelSpec(data_shape=(2,), latent_dim=1, flow_hidden=(8,))
    model = build_model(spec).train()
    rows = torch.randn(64, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    expected = torch.rand(5)  # what training would draw next
    torch.manual_seed(7)
    image = model_image(model, spec, rows, title="step 50 · val NLL 2.0000", samples=64)
    assert torch.equal(torch.rand(5), expected)  # a resumed run draws what an uninterrupted one draws
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert image.mode == "RGB" and min(image.size) > 100
