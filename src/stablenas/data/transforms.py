"""Batched, vectorised data augmentation with explicit random generators.

Every transform works on a whole (N, C, H, W) batch at once, on whatever device the batch lives on, with
no Python loop over samples: per-sample randomness becomes index grids and masks.  All random numbers are
drawn from the ``torch.Generator`` passed in (on that generator's device, then moved to the batch's
device), never from the global RNG, so a run is reproducible from its seed alone and can be resumed
exactly; drawing on the generator's device also means a CPU generator gives the same augmentation whether
the batch is on CPU or GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Augment", "cutout", "normalize", "random_crop", "random_flip"]


def _randint(high: int, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=generator.device).to(device)


def _rand(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _channel_tensor(values: Sequence[float] | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    if t.shape[1] != x.shape[1]:
        raise ValueError(f"{t.shape[1]} normalisation values for {x.shape[1]} channels")
    return t


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor,
              std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 ``(x / 255 - mean) / std``, per channel; keeps ``x``'s memory format."""
    if x.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 pixels, got {x.dtype}")
    out = x.to(torch.float32)
    return out.div_(255.0).sub_(_channel_tensor(mean, x)).div_(_channel_tensor(std, x))


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each side by ``padding`` and take an H x W window at a random offset per sample.

    Draws two integer vectors in [0, 2 * padding] from ``generator``: row offsets, then column offsets.
    Implemented as two ``gather`` calls with per-sample index grids.  ``padding == 0`` returns ``x`` itself
    and draws nothing.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = x.shape
    if padding == 0 or n == 0:
        return x
    top = _randint(2 * padding + 1, n, generator, x.device)
    left = _randint(2 * padding + 1, n, generator, x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = top[:, None] + torch.arange(h, device=x.device)  # (N, H) rows of the padded image
    cols = left[:, None] + torch.arange(w, device=x.device)  # (N, W)
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each sample left-right with probability ``p``.

    Draws one uniform vector ``u`` of length N; sample i is flipped iff ``u[i] < p``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if x.shape[0] == 0:
        return x
    flip = _rand(x.shape[0], generator, x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: torch.Tensor, length: int, generator: torch.Generator, p: float = 1.0) -> torch.Tensor:
    """Zero a ``length`` x ``length`` square at a random centre per sample, clipped at the borders.

    As in DARTS's Cutout, the centre (cy, cx) is uniform over all pixels, so squares near an edge are
    partly outside the image and cover fewer pixels.  The square spans rows
    ``[cy - length // 2, cy - length // 2 + length)`` (and likewise columns), i.e. exactly ``length`` rows
    for odd lengths too.  Draws, in order: N centre rows in [0, H), N centre columns in [0, W), and, only
    when ``p < 1``, one uniform vector ``u`` where sample i is cut iff ``u[i] < p``.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    n, _, h, w = x.shape
    if length == 0 or n == 0:
        return x
    cy = _randint(h, n, generator, x.device)
    cx = _randint(w, n, generator, x.device)
    top, left = cy - length // 2, cx - length // 2
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + length)  # (N, H); clipping is implicit
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + length)  # (N, W)
    box = in_rows[:, :, None] & in_cols[:, None, :]  # (N, H, W)
    if p < 1.0:
        box &= (_rand(n, generator, x.device) < p)[:, None, None]
    return x.masked_fill(box[:, None], 0)


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation config: random crop with padding, horizontal flip, cutout.

    The pipeline has two stages so a loader can reproduce the usual CIFAR recipe exactly: :meth:`spatial`
    (crop, flip) runs on uint8 pixels, so crop padding is black as with padded PIL images, and
    :meth:`erase` (cutout) runs after normalisation, so the cut square is zero in normalised units (the
    dataset's mean colour).  Calling the object applies both stages to whatever tensor it is given.
    """

    crop_padding: int = 0  # 0 = no random crop
    flip: bool = False
    cutout: int = 0  # square side length; 0 = no cutout
    cutout_prob: float = 1.0

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.cutout < 0:
            raise ValueError("crop_padding and cutout must be >= 0")
        if not 0.0 <= self.cutout_prob <= 1.0:
            raise ValueError(f"cutout_prob must be in [0, 1], got {self.cutout_prob}")

    @classmethod
    def cifar(cls, cutout: int = 0) -> Augment:
        """The standard CIFAR recipe: pad-4 random crop and flip, optionally cutout (16 in DARTS eval)."""
        return cls(crop_padding=4, flip=True, cutout=cutout)

    @property
    def enabled(self) -> bool:
        return bool(self.crop_padding or self.flip or self.cutout)

    def spatial(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Geometric stage: random crop, then flip.  Any dtype."""
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if self.flip:
            x = random_flip(x, generator)
        return x

    def erase(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Erasing stage: cutout."""
        if self.cutout:
            x = cutout(x, self.cutout, generator, self.cutout_prob)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.erase(self.spatial(x, generator), generator)
