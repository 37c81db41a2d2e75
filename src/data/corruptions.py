"""Deterministic image corruptions for robustness evaluation (evaluation only, never training).

Each corruption maps uint8 images (N, H, W, 3) to uint8 images of the same shape, generated here
from images held exactly (PIL for JPEG, torchvision for blur, a seeded torch generator for noise),
so every run and every machine sees the same corrupted set.

- ``jpeg75`` / ``jpeg50``: re-encoded as baseline JPEG (PIL, 4:2:0 subsampling, optimize off) at
  quality 75 / 50 and decoded again;
- ``noise``: additive Gaussian noise, sigma = 0.05 of the [0, 1] range (12.75 grey levels), seed 0,
  rounded and clipped to [0, 255];
- ``blur``: Gaussian blur, 3 x 3 kernel, sigma 1.0 (torchvision.transforms.functional.gaussian_blur,
  reflect padding).
"""

from __future__ import annotations

import io

import numpy as np
import torch

__all__ = ["CORRUPTIONS", "corrupt"]

CORRUPTIONS = {
    "jpeg75": "JPEG re-encoded, quality 75",
    "jpeg50": "JPEG re-encoded, quality 50",
    "noise": "Gaussian noise, sigma 0.05 (of the [0, 1] range)",
    "blur": "Gaussian blur, 3x3, sigma 1.0",
}
NOISE_SIGMA = 0.05
BLUR_KERNEL, BLUR_SIGMA = 3, 1.0


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    out = np.empty_like(x)
    for i, img in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def _noise(x: np.ndarray, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float32) * (NOISE_SIGMA * 255)
    return (torch.from_numpy(x).float() + noise).round().clamp(0, 255).to(torch.uint8).numpy()


def _blur(x: np.ndarray) -> np.ndarray:
    from torchvision.transforms.functional import gaussian_blur

    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
    out = gaussian_blur(t, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def corrupt(x: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """`x` (N, H, W, 3) uint8 under corruption `name` (one of :data:`CORRUPTIONS`)."""
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"corrupt(): expected uint8 images (N, H, W, 3), got {x.dtype} {x.shape}")
    if name == "jpeg75":
        return _jpeg(x, 75)
    if name == "jpeg50":
        return _jpeg(x, 50)
    if name == "noise":
        return _noise(x, seed)
    if name == "blur":
        return _blur(x)
    raise ValueError(f"corruption {name!r}: expected one of {', '.join(CORRUPTIONS)}")
