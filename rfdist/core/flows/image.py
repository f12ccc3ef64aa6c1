"""Multi-scale convolutional coupling flows for images (RealNVP-style, ResNet conditioners).

zuko has no convolutional or multi-scale layers, so these are small plain-torch modules. They
keep the image shape on both sides (squeezes are undone after each scale, as in Glow's
multi-scale layout), so a latent tensor is ``(C, H, W)`` like the data; :meth:`MultiScaleFlow.
latent_order` lists latent positions from the deepest scale (most layers) to the shallowest,
which is where an injective model should put its ``d`` free coordinates. No batch norm: every
layer must act on rows independently for the per-row Jacobians to be right.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from rfdist.core.flows.base import Bijection, Chain

__all__ = ["ImageAffineCoupling", "MultiScaleFlow", "ResNetCoupler", "squeeze", "unsqueeze"]


def squeeze(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` → ``(B, 4C, H/2, W/2)``: each 2×2 patch becomes 4 channels."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """Inverse of :func:`squeeze`."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


class ResNetCoupler(nn.Module):
    """Conditioner: 3×3 conv in, ``blocks`` residual blocks, zero-initialised 3×3 conv out."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, blocks: int = 8) -> None:
        super().__init__()
        self.inp = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.Sequential(*[_ResidualBlock(hidden) for _ in range(blocks)])
        self.out = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.blocks(self.inp(x))))


class ImageAffineCoupling(Bijection):
    """Affine coupling on ``(C, H, W)`` with a checkerboard or a channel-split mask.

    The masked-in part conditions a ResNet that outputs a log-scale (soft-bounded by
    ``2·tanh(·/2)``) and a shift for the other part; ``forward`` scales then shifts.

    Example:
        >>> layer = ImageAffineCoupling((1, 4, 4), "checkerboard", parity=0, hidden=8, blocks=1)
        >>> x = torch.randn(2, 1, 4, 4)
        >>> torch.allclose(layer.inverse(layer(x)), x, atol=1e-6)
        True
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        mask: Literal["checkerboard", "channel"],
        *,
        parity: int,
        hidden: int = 64,
        blocks: int = 8,
    ) -> None:
        super().__init__()
        c, h, w = shape
        if mask == "checkerboard":
            grid = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == parity % 2
            keep = grid.expand(c, h, w).to(torch.get_default_dtype())
        elif mask == "channel":
            if c % 2:
                raise ValueError(f"a channel coupling needs an even channel count, got {c}")
            half = torch.arange(c) < c // 2
            half = half if parity % 2 == 0 else ~half
            keep = half[:, None, None].expand(c, h, w).to(torch.get_default_dtype())
        else:
            raise ValueError(f"mask must be 'checkerboard' or 'channel', got {mask!r}")
        self.register_buffer("keep", keep.clone())
        self.net = ResNetCoupler(c, 2 * c, hidden, blocks)

    def _params(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        raw_scale, shift = self.net(kept).chunk(2, dim=1)
        free = 1.0 - self.keep
        log_scale = 2.0 * torch.tanh(raw_scale / 2.0) * free
        return log_scale, shift * free

    def forward_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._params(z * self.keep)
        return z * log_scale.exp() + shift, log_scale.flatten(1).sum(-1)

    def inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._params(x * self.keep)
        return (x - shift) * torch.exp(-log_scale), -log_scale.flatten(1).sum(-1)


class MultiScaleFlow(Bijection):
    """RealNVP's multi-scale architecture on images, latent and data both ``(C, H, W)``.

    One scale: ``couplings`` checkerboard couplings, squeeze, ``couplings`` channel couplings,
    then half the channels go on to the next scale and half are factored out. The last scale
    is ``couplings + 1`` checkerboard couplings. Spatial sizes must stay even while squeezing.

    Arguments:
        shape: ``(C, H, W)``.
        scales: number of squeezing scales (0 = only checkerboard couplings).
        couplings: couplings per stage.
        hidden: conditioner channels.
        blocks: residual blocks per conditioner.

    Example:
        >>> flow = MultiScaleFlow((1, 8, 8), scales=1, couplings=1, hidden=8, blocks=1)
        >>> flow(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        *,
        scales: int = 2,
        couplings: int = 3,
        hidden: int = 64,
        blocks: int = 8,
    ) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = (c, h, w)
        self.is_last = scales == 0
        if self.is_last:
            self.pre = Chain(
                ImageAffineCoupling(shape, "checkerboard", parity=i, hidden=hidden, blocks=blocks)
                for i in range(couplings + 1)
            )
            return
        if h % 2 or w % 2:
            raise ValueError(f"cannot squeeze an image of size {h}x{w}: use fewer scales")
        squeezed = (4 * c, h // 2, w // 2)
        self.pre = Chain(
            ImageAffineCoupling(shape, "checkerboard", parity=i, hidden=hidden, blocks=blocks)
            for i in range(couplings)
        )
        self.post = Chain(
            ImageAffineCoupling(squeezed, "channel", parity=i, hidden=hidden, blocks=blocks)
            for i in range(couplings)
        )
        self.sub = MultiScaleFlow(
            (2 * c, h // 2, w // 2), scales=scales - 1, couplings=couplings, hidden=hidden, blocks=blocks
        )

    def forward_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.is_last:
            return self.pre.forward_and_ladj(z)
        h = squeeze(z)
        half = h.shape[1] // 2
        deep, ladj_sub = self.sub.forward_and_ladj(h[:, :half])
        h, ladj_post = self.post.forward_and_ladj(torch.cat([deep, h[:, half:]], dim=1))
        x, ladj_pre = self.pre.forward_and_ladj(unsqueeze(h))
        return x, ladj_sub + ladj_post + ladj_pre

    def inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.is_last:
            return self.pre.inverse_and_ladj(x)
        h, ladj_pre = self.pre.inverse_and_ladj(x)
        h, ladj_post = self.post.inverse_and_ladj(squeeze(h))
        half = h.shape[1] // 2
        deep, ladj_sub = self.sub.inverse_and_ladj(h[:, :half])
        return unsqueeze(torch.cat([deep, h[:, half:]], dim=1)), ladj_sub + ladj_post + ladj_pre

    def forward(self, z: Tensor) -> Tensor:
        if self.is_last:
            return self.pre(z)
        h = squeeze(z)
        half = h.shape[1] // 2
        h = self.post(torch.cat([self.sub(h[:, :half]), h[:, half:]], dim=1))
        return self.pre(unsqueeze(h))

    def inverse(self, x: Tensor) -> Tensor:
        if self.is_last:
            return self.pre.inverse(x)
        h = self.post.inverse(squeeze(self.pre.inverse(x)))
        half = h.shape[1] // 2
        return unsqueeze(torch.cat([self.sub.inverse(h[:, :half]), h[:, half:]], dim=1))

    def latent_order(self) -> Tensor:
        """Flat latent positions ordered from the deepest scale to the shallowest."""
        index = torch.arange(self.shape[0] * self.shape[1] * self.shape[2]).view(1, *self.shape)
        return self._order(index)

    def _order(self, index: Tensor) -> Tensor:
        if self.is_last:
            return index.flatten()
        h = squeeze(index)
        half = h.shape[1] // 2
        return torch.cat([self.sub._order(h[:, :half]), h[:, half:].flatten()])
