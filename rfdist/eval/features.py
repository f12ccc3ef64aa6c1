"""Pluggable feature extractors for Fréchet distances (the ``fd_<name>`` metrics).

- ``raw``: the data rows themselves (vectors; the paper's choice for tabular data).
- ``lenet``: the 84-d penultimate layer of a small LeNet-5 classifier trained on the dataset's
  own labels, cached on disk (atomic write; loaded with ``torch.load(weights_only=True)``).
  A stand-in for Inception features on small grey-scale images; numbers are comparable only
  between models evaluated with the same cached classifier.
- ``inception:PATH``: Inception-v3 pool features (2048-d) from a weights file the user already
  has (e.g. pytorch-fid's ``pt_inception-2015-12-05-*.pth``). Nothing is ever downloaded; the
  architecture comes from torchvision, which this path needs.

Images are passed in pixel units ``[0, 256)``, shape ``(N, C, H, W)``.

Example:
    >>> import torch
    >>> get_extractor("raw")(torch.ones(4, 3)).shape
    (4, 3)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["FeatureExtractor", "LeNet", "cache_dir", "get_extractor", "train_lenet"]


@dataclass
class FeatureExtractor:
    """``name`` labels the metric (``fd_<name>``); calling it maps rows to ``(N, F)`` features."""

    name: str
    fn: Callable[[Tensor], np.ndarray]

    def __call__(self, x: Tensor) -> np.ndarray:
        return self.fn(x)


def cache_dir() -> Path:
    """``$RFDIST_CACHE_DIR``, else ``~/.cache/rfdist`` (where trained extractors are kept)."""
    return Path(os.environ.get("RFDIST_CACHE_DIR") or Path.home() / ".cache" / "rfdist")


# ----------------------------------------------------------------------------- LeNet
class LeNet(nn.Module):
    """LeNet-5 for ``(C, H, W)`` images in ``[0, 1]``; :meth:`features` is the 84-d layer."""

    def __init__(self, shape: tuple[int, int, int], classes: int) -> None:
        super().__init__()
        c, h, w = shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        flat = 16 * (h // 4) * (w // 4)
        self.body = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.head = nn.Linear(84, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.conv(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _fingerprint(x: Tensor, y: Tensor) -> str:
    digest = hashlib.sha1()
    digest.update(json.dumps([list(x.shape), int(y.max()) + 1]).encode())
    step = max(1, x.shape[0] // 512)
    digest.update(x[::step].contiguous().numpy().tobytes())
    digest.update(y[::step].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_lenet(
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int = 2,
    max_rows: int = 20_000,
    seed: int = 0,
    cache: Path | None = None,
    progress: bool = False,
) -> LeNet:
    """A LeNet trained on ``images`` (pixels) and ``labels``, from the disk cache when present.

    The cache key is a fingerprint of the training rows and labels, so a different dataset never
    reuses another's classifier. Written atomically (temp file + ``os.replace``).
    """
    images, labels = images[:max_rows], labels[:max_rows].long()
    shape = tuple(images.shape[1:])
    classes = int(labels.max()) + 1
    folder = Path(cache) if cache is not None else cache_dir() / "features"
    path = folder / f"lenet-{_fingerprint(images, labels)}-e{epochs}-s{seed}.pt"
    model = LeNet(shape, classes)  # type: ignore[arg-type]
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LeNet(shape, classes)  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = images / 255.0
    batches = range(epochs * ((x.shape[0] + 127) // 128))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="train lenet", unit="batch", leave=False)
    order = torch.cat([torch.randperm(x.shape[0], generator=gen) for _ in range(epochs)])
    model.train()
    for i in batches:
        idx = order[i * 128 : (i + 1) * 128]
        if idx.numel() == 0:
            continue
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), labels[idx]).backward()
        optimizer.step()
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as handle:
        tmp = handle.name
    try:
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return model


def _batched(fn: Callable[[Tensor], Tensor], batch_size: int = 512) -> Callable[[Tensor], np.ndarray]:
    @torch.no_grad()
    def run(x: Tensor) -> np.ndarray:
        parts = [fn(x[i : i + batch_size].float()).double().numpy() for i in range(0, x.shape[0], batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0))

    return run


# ------------------------------------------------------------------------- Inception
def _inception(weights: str) -> Callable[[Tensor], Tensor]:
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file {weights!r} not found (it is never downloaded)")
    try:
        import torchvision
    except ImportError:
        raise RuntimeError(
            "the Inception-v3 feature extractor needs torchvision, which is not installed; "
            "pip install 'rfdist-flows[inception]', or use --features lenet"
        ) from None
    net = torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=False, num_classes=1008
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=False)
    net.fc = nn.Identity()
    net.eval()

    def features(x: Tensor) -> Tensor:
        x = x / 255.0
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return net(2 * x - 1)

    return features


def get_extractor(
    spec: str,
    *,
    train_images: Tensor | None = None,
    train_labels: Tensor | None = None,
    cache: Path | None = None,
    progress: bool = False,
) -> FeatureExtractor:
    """The extractor named by ``spec``: ``raw``, ``lenet`` or ``inception:PATH``.

    ``lenet`` needs the dataset's training images (pixels) and labels.
    """
    if spec == "raw":
        return FeatureExtractor("raw", lambda x: x.reshape(x.shape[0], -1).double().numpy())
    if spec == "lenet":
        if train_images is None or train_labels is None:
            raise ValueError("the lenet features need a dataset with a 'label' column; use --features raw")
        if train_images.dim() != 4:
            raise ValueError(
                f"the lenet features need image rows (C, H, W), got {tuple(train_images.shape[1:])}"
            )
        net = train_lenet(train_images, train_labels, cache=cache, progress=progress)
        net.requires_grad_(False)
        return FeatureExtractor("lenet", _batched(lambda x: net.features(x / 255.0)))
    if spec.startswith("inception:"):
        return FeatureExtractor("inception", _batched(_inception(spec.split(":", 1)[1]), batch_size=32))
    raise ValueError(f"unknown feature extractor {spec!r} (raw | lenet | inception:PATH)")
