"""The 15 corruptions of CIFAR-10-C at severities 1-5, with CIFAR-10-C's parameters (32x32).

Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019. Every parameter below is the one of the script that made CIFAR-10-C,
``ImageNet-C/create_c/make_cifar_c.py`` in the hendrycks/robustness repository (not ImageNet-C's
224x224 values); docs/corruptions.md has the full table, the source and every deviation.

    images = ...                                  # (N, 32, 32, 3) uint8
    out = corrupt_c(images, "gaussian_noise", 3)  # (N, 32, 32, 3) uint8, seed 0
    out = cached_corruption(images, "frost", 5)   # generated once under data/cifar10c/, then read

Determinism: each image gets its own random generator, seeded from (seed, image index, corruption,
severity) with :class:`numpy.random.SeedSequence`, so an image's corrupted version does not depend
on which other images are in the batch or in which order: pass ``indices`` (the images' positions
in the full evaluation set) when corrupting a subset. Six corruptions draw no random numbers
(:data:`DETERMINISTIC`).

Each corruption follows the reference step for step (same primitives: scikit-image, SciPy, OpenCV,
PIL), converts to uint8 as the reference's final ``np.uint8(...)`` does (truncation after clipping),
and differs only where docs/corruptions.md says so (motion blur without ImageMagick, the random
streams, glass blur vectorized).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "CORRUPTIONS_C",
    "DETERMINISTIC",
    "FAMILIES",
    "PARAMS",
    "SEVERITIES",
    "VERSION",
    "cache_path",
    "cached_corruption",
    "corrupt_c",
    "image_rng",
    "images_digest",
    "iter_corruptions",
]

# Bump whenever a change here alters any output: it is part of every cache file's name.
VERSION = 1

CORRUPTIONS_C: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": CORRUPTIONS_C[0:3],
    "blur": CORRUPTIONS_C[3:7],
    "weather": CORRUPTIONS_C[7:11],
    "digital": CORRUPTIONS_C[11:15],
}
# The corruptions that draw no random numbers (the seed does not change their output).
DETERMINISTIC = frozenset({"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                           "jpeg_compression"})

IMSIZE = 32
# make_cifar_c.py's `c` lists, value for value (severity 1..5); the tuple layouts are named in
# docs/corruptions.md.
PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, .08, .09, .10),                       # sigma, [0, 1] range
    "shot_noise": (500, 250, 100, 75, 50),                               # photons per unit
    "impulse_noise": (.01, .02, .03, .05, .07),                          # s&p amount
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # radius, alias
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1),              # sigma, max delta,
                   (0.25, 1, 2), (0.4, 1, 2)),                           # passes
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),         # radius, sigma
    "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01),     # np.arange(*c)
                  (1, 1.21, 0.01), (1, 1.26, 0.01)),
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),                             # loc, scale, zoom, thresh,
             (0.1, 0.2, 1, 0.5, 10, 4, 0.9),                             # blur radius, blur sigma,
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),                        # image weight
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # image, frost weight
    "fog": ((.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),          # strength, wibble decay
    "brightness": (.05, .1, .15, .2, .3),                                # added to HSV value
    "contrast": (.75, .5, .4, .3, 0.15),                                 # factor about the mean
    "elastic_transform": ((IMSIZE * 0, IMSIZE * 0, IMSIZE * 0.08),       # alpha, sigma, affine
                          (IMSIZE * 0.05, IMSIZE * 0.2, IMSIZE * 0.07),
                          (IMSIZE * 0.08, IMSIZE * 0.06, IMSIZE * 0.06),
                          (IMSIZE * 0.1, IMSIZE * 0.04, IMSIZE * 0.05),
                          (IMSIZE * 0.1, IMSIZE * 0.03, IMSIZE * 0.03)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),                           # downscale factor (BOX)
    "jpeg_compression": (80, 65, 58, 50, 40),                            # PIL JPEG quality
}

_FROST_DIR = Path(__file__).resolve().parent / "assets" / "cifar10c_frost"
_FROST_FILES = tuple(f"frost{i}.png" for i in range(1, 6))


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------

def _check_name(name) -> str:
    if not isinstance(name, str) or name not in PARAMS:
        raise ValueError(f"unknown corruption {name!r}: expected one of {', '.join(CORRUPTIONS_C)}")
    return name


def _check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) \
            or not 1 <= int(severity) <= 5:
        raise ValueError(f"severity {severity!r}: expected an integer in 1-5 "
                         f"({', '.join(map(str, SEVERITIES))})")
    return int(severity)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed {seed!r}: expected a non-negative integer")
    return int(seed)


def _check_images(images) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images of type {type(images).__name__}: expected a numpy array of "
                         f"uint8 images (N, {IMSIZE}, {IMSIZE}, 3)")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMSIZE, IMSIZE, 3):
        raise ValueError(f"images {images.dtype} {tuple(images.shape)}: expected uint8 images "
                         f"(N, {IMSIZE}, {IMSIZE}, 3) (NHWC, RGB, 0-255; CIFAR-10-C's parameters "
                         f"are for {IMSIZE}x{IMSIZE})")
    return images


def _check_indices(indices, n: int) -> np.ndarray:
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(indices)
    if idx.shape != (n,) or (n and (idx.dtype.kind not in "iu" or idx.min() < 0)):
        raise ValueError(f"indices {idx.dtype} {tuple(idx.shape)}: expected {n} non-negative "
                         f"integers, one per image (its position in the full evaluation set)")
    return idx.astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Seeds
# ------------------------------------------------------------------------------------------------

def _name_key(name: str) -> int:
    return zlib.crc32(name.encode())  # stable across runs and Python versions (unlike hash())


def image_rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
    """The generator of image `index` under (`name`, `severity`): PCG64 seeded by
    SeedSequence([seed, crc32(name), severity, index])."""
    return np.random.Generator(np.random.PCG64(
        np.random.SeedSequence([int(seed), _name_key(name), int(severity), int(index)])))


# ------------------------------------------------------------------------------------------------
# Helpers of make_cifar_c.py
# ------------------------------------------------------------------------------------------------

def _gaussian(x: np.ndarray, sigma: float, **kw) -> np.ndarray:
    from skimage.filters import gaussian

    return gaussian(x, sigma=sigma, **kw)


def _disk(radius: float, alias_blur: float, dtype=np.float32) -> np.ndarray:
    import cv2

    if radius <= 8:
        ax, ksize = np.arange(-8, 8 + 1), (3, 3)
    else:
        ax, ksize = np.arange(-radius, radius + 1), (5, 5)
    xx, yy = np.meshgrid(ax, ax)
    aliased = np.array((xx ** 2 + yy ** 2) <= radius ** 2, dtype=dtype)
    aliased /= np.sum(aliased)
    return cv2.GaussianBlur(aliased, ksize=ksize, sigmaX=alias_blur)  # supersample to antialias


def _clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """Zoom the centre of `img` (H, W, C) - or of every image of (N, H, W, C) - by `zoom_factor`
    (SciPy, linear) and crop back to H x W. A batch is zoomed as one (H, W, N*C) image: each
    output value is computed exactly as for its own image (same weights, same order), 3x faster
    than a 4-D zoom."""
    from scipy.ndimage import zoom

    batched = img.ndim == 4
    h = img.shape[1] if batched else img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    crop = img[:, top:top + ch, top:top + ch] if batched else img[top:top + ch, top:top + ch]
    if batched:
        n, c = img.shape[0], img.shape[3]
        crop = crop.transpose(1, 2, 0, 3).reshape(ch, ch, n * c)
    out = zoom(crop, (zoom_factor, zoom_factor, 1), order=1)
    trim = (out.shape[0] - h) // 2
    out = out[trim:trim + h, trim:trim + h]
    return out.reshape(h, h, n, c).transpose(2, 0, 1, 3) if batched else out


def _motion_blur_kernel(radius: float, sigma: float,
                        angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ImageMagick's MotionBlurImage kernel: width 2*ceil(radius)+1 (GetOptimalKernelWidth1D), a
    one-sided Gaussian exp(-i^2 / 2 sigma^2) normalised to sum 1 (GetMotionBlurKernel), and tap i
    read at pixel offset (ceil(i cos a - 0.5), ceil(i sin a - 0.5)) in (column, row)."""
    width = int(2 * math.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    kernel = np.exp(-(i * i) / (2.0 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
    kernel /= kernel.sum()
    px, py = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    hyp = math.hypot(px, py)
    off_col = np.ceil(i * py / hyp - 0.5).astype(np.int64)
    off_row = np.ceil(i * px / hyp - 0.5).astype(np.int64)
    return kernel, off_row, off_col


def _motion_blur(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """Motion blur of a uint8 image (H, W) or (H, W, C) as ImageMagick's MotionBlurImage computes
    it (edge virtual pixels: reads past the border take the nearest edge pixel), quantized as a
    16-bit-quantum ImageMagick does and as the reference's 8-bit PNG round trip returns it: the sum
    in 16-bit units (x 257) rounded to an integer, then truncated to 8 bits. Returns uint8; equal,
    bit for bit, to ImageMagick 6.9.11 Q16 ``convert -motion-blur RxS+A`` (docs/corruptions.md)."""
    kernel, off_row, off_col = _motion_blur_kernel(radius, sigma, angle)
    h, w = img.shape[:2]
    src = img.astype(np.float64)
    out = np.zeros_like(src)
    rows, cols = np.arange(h), np.arange(w)
    for k, dr, dc in zip(kernel, off_row, off_col):
        r = np.clip(rows + dr, 0, h - 1)
        c = np.clip(cols + dc, 0, w - 1)
        out += k * src[r][:, c]
    q16 = np.clip(np.floor(out * 257.0 + 0.5), 0, 65535)
    return np.floor(q16 / 257.0).astype(np.uint8)


def _plasma_fractal(rng: np.random.Generator, mapsize: int = 32,
                    wibbledecay: float = 3) -> np.ndarray:
    """Diamond-square height map in [0, 1], (mapsize, mapsize); make_cifar_c.py's plasma_fractal."""
    assert mapsize & (mapsize - 1) == 0
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    def fillsquares():
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        half = slice(stepsize // 2, mapsize, stepsize)
        maparray[half, half] = wibbledmean(squareaccum)

    def filldiamonds():
        drgrid = maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[0:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=0)
        maparray[stepsize // 2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)

    while stepsize >= 2:
        fillsquares()
        filldiamonds()
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


@lru_cache(maxsize=1)
def _frost_images() -> tuple[np.ndarray, ...]:
    """The five frost textures the reference draws from (frost1-5; its randint(5) never picks
    frost6), already scaled by 0.2 as the reference does (cv2.resize, linear), RGB uint8."""
    from PIL import Image

    out = []
    for f in _FROST_FILES:
        p = _FROST_DIR / f
        if not p.exists():
            raise FileNotFoundError(f"frost texture {p} is missing: it ships with the repository "
                                    f"(src/data/assets/cifar10c_frost/, see docs/corruptions.md)")
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB")))
    return tuple(out)


def _glass_shuffle(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """One pass of the reference's pixel "swap" loop, vectorized. The reference visits (h, w)
    for h, w in range(32 - 1, 1, -1) (rows, then columns, 31 down to 2) and runs
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views, which copies x[h', w'] into
    x[h, w] and leaves x[h', w'] as it was. With max_delta 1 the offsets
    (dy, dx) are in {-1, 0} (randint's upper bound is exclusive), so every source pixel is visited
    later than its target and is still unmodified: the sequential loop equals one gather.
    `offsets` (n, n, 2) holds (dx, dy) per visited pixel in visiting order."""
    hs = np.arange(IMSIZE - 1, 1, -1)
    hh, ww = np.meshgrid(hs, hs, indexing="ij")
    dx, dy = offsets[..., 0], offsets[..., 1]
    out = x.copy()
    out[hh, ww] = x[hh + dy, ww + dx]
    return out


# ------------------------------------------------------------------------------------------------
# The corruptions. Per-image ones take (x uint8 (32, 32, 3), c, rng); batched ones (deterministic)
# take (X uint8 (N, 32, 32, 3), c). They return floats in [0, 255] (truncated to uint8 after) or
# uint8.
# ------------------------------------------------------------------------------------------------

def _gaussian_noise(x, c, rng):
    x = x / 255.
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def _shot_noise(x, c, rng):
    x = x / 255.
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def _impulse_noise(x, c, rng):
    from skimage.util import random_noise

    x = random_noise(x / 255., mode="s&p", amount=c, rng=rng)
    return np.clip(x, 0, 1) * 255


def _defocus_blur(X, c):
    import cv2

    kernel = _disk(radius=c[0], alias_blur=c[1])
    X = X / 255.
    out = np.empty_like(X)
    for i, x in enumerate(X):  # filter2D: correlation, BORDER_REFLECT_101, each channel alike
        out[i] = cv2.filter2D(x, -1, kernel)
    return np.clip(out, 0, 1) * 255


def _glass_blur(x, c, rng):
    sigma, max_delta, iterations = c
    assert max_delta == 1, "the vectorized shuffle is exact for max_delta 1 (all CIFAR severities)"
    x = np.uint8(_gaussian(x / 255., sigma, channel_axis=-1) * 255)
    n = IMSIZE - 2 * max_delta
    offsets = rng.integers(-max_delta, max_delta, size=(iterations, n, n, 2))
    for it in range(iterations):
        x = _glass_shuffle(x, offsets[it])
    return np.clip(_gaussian(x / 255., sigma, channel_axis=-1), 0, 1) * 255


def _motion_blur_c(x, c, rng):
    return _motion_blur(x, radius=c[0], sigma=c[1], angle=rng.uniform(-45, 45))


def _zoom_blur(X, c):
    X = (X / 255.).astype(np.float32)
    out = np.zeros_like(X)
    factors = np.arange(*c)
    for z in factors:
        out += _clipped_zoom(X, z)
    X = (X + out) / (len(factors) + 1)
    return np.clip(X, 0, 1) * 255


def _snow(x, c, rng):
    import cv2

    x = np.array(x, dtype=np.float32) / 255.
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = _clipped_zoom(layer[..., np.newaxis], c[2])
    layer[layer < c[3]] = 0
    layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8)
    layer = _motion_blur(layer, radius=c[4], sigma=c[5], angle=rng.uniform(-135, -45)) / 255.
    layer = layer[..., np.newaxis]
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(IMSIZE, IMSIZE, 1)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def _frost(x, c, rng):
    frosts = _frost_images()
    frost = frosts[rng.integers(5)]
    top = rng.integers(0, frost.shape[0] - IMSIZE)
    left = rng.integers(0, frost.shape[1] - IMSIZE)
    frost = frost[top:top + IMSIZE, left:left + IMSIZE]
    return np.clip(c[0] * np.array(x, dtype=np.float64) + c[1] * frost, 0, 255)


def _fog(x, c, rng):
    x = x / 255.
    max_val = x.max()
    x = x + c[0] * _plasma_fractal(rng, wibbledecay=c[1])[:IMSIZE, :IMSIZE][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def _brightness(X, c):
    from skimage.color import hsv2rgb, rgb2hsv

    X = rgb2hsv(X / 255.)
    X[..., 2] = np.clip(X[..., 2] + c, 0, 1)
    return np.clip(hsv2rgb(X), 0, 1) * 255


def _contrast(X, c):
    X = X / 255.
    means = np.mean(X, axis=(1, 2), keepdims=True)  # per image and channel
    return np.clip((X - means) * c + means, 0, 1) * 255


def _elastic_transform(x, c, rng):
    import cv2
    from scipy.ndimage import map_coordinates

    image = np.array(x, dtype=np.float32) / 255.
    shape = image.shape
    shape_size = shape[:2]
    # random affine
    center_square = np.float32(shape_size) // 2
    square_size = min(shape_size) // 3
    pts1 = np.float32([center_square + square_size,
                       [center_square[0] + square_size, center_square[1] - square_size],
                       center_square - square_size])
    pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    m = cv2.getAffineTransform(pts1, pts2)
    image = cv2.warpAffine(image, m, shape_size[::-1], borderMode=cv2.BORDER_REFLECT_101)
    # elastic displacement field
    dx = (_gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3)
          * c[0]).astype(np.float32)
    dy = (_gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3)
          * c[0]).astype(np.float32)
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]
    xx, yy, zz = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    ind = np.reshape(yy + dy, (-1, 1)), np.reshape(xx + dx, (-1, 1)), np.reshape(zz, (-1, 1))
    out = map_coordinates(image, ind, order=1, mode="reflect").reshape(shape)
    return np.clip(out, 0, 1) * 255


def _pixelate(X, c):
    from PIL import Image

    small = int(IMSIZE * c)
    out = np.empty_like(X)
    for i, x in enumerate(X):
        im = Image.fromarray(x).resize((small, small), Image.Resampling.BOX)
        out[i] = np.asarray(im.resize((IMSIZE, IMSIZE), Image.Resampling.BOX))
    return out


def _jpeg_compression(X, c):
    from PIL import Image

    out = np.empty_like(X)
    for i, x in enumerate(X):
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "JPEG", quality=c)  # PIL defaults: 4:2:0, baseline
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("RGB"))
    return out


_PER_IMAGE = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "glass_blur": _glass_blur, "motion_blur": _motion_blur_c, "snow": _snow, "frost": _frost,
    "fog": _fog, "elastic_transform": _elastic_transform,
}
_BATCHED = {
    "defocus_blur": _defocus_blur, "zoom_blur": _zoom_blur, "brightness": _brightness,
    "contrast": _contrast, "pixelate": _pixelate, "jpeg_compression": _jpeg_compression,
}
assert set(_PER_IMAGE) | set(_BATCHED) == set(CORRUPTIONS_C) and set(_BATCHED) == DETERMINISTIC


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """The reference's final np.uint8(...): clip to [0, 255], then truncate."""
    if x.dtype == np.uint8:
        return x
    return np.clip(x, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------

def corrupt_c(images: np.ndarray, name: str, severity: int, seed: int = 0,
              indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """CIFAR-10-C corruption `name` at `severity` (1-5) of uint8 `images` (N, 32, 32, 3).

    Image i uses the generator ``image_rng(seed, name, severity, indices[i])``; `indices` defaults
    to 0..N-1, so corrupting a subset image-for-image as in the full set takes its indices.
    Returns a new uint8 array of the same shape. Raises ValueError naming a wrong name, severity,
    seed, image array or indices, and what is allowed.
    """
    name = _check_name(name)
    severity = _check_severity(severity)
    seed = _check_seed(seed)
    images = _check_images(images)
    idx = _check_indices(indices, len(images))
    c = PARAMS[name][severity - 1]
    if len(images) == 0:
        return images.copy()
    if name in _BATCHED:
        return _to_uint8(_BATCHED[name](images, c))
    fn = _PER_IMAGE[name]
    out = np.empty_like(images)
    for i, (x, j) in enumerate(zip(images, idx)):
        out[i] = _to_uint8(fn(x, c, image_rng(seed, name, severity, j)))
    return out


def _library_versions() -> str:
    import cv2
    import PIL
    import scipy
    import skimage

    return (f"numpy={np.__version__};scipy={scipy.__version__};skimage={skimage.__version__};"
            f"cv2={cv2.__version__};PIL={PIL.__version__}")


def images_digest(images: np.ndarray, indices=None) -> str:
    """sha256 of the images (shape and bytes) and of their indices: the part of a cache file's
    name that changes with the input."""
    images = _check_images(images)
    idx = _check_indices(indices, len(images))
    h = hashlib.sha256()
    h.update(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(idx).tobytes())
    return h.hexdigest()


def cache_path(images: np.ndarray, name: str, severity: int, seed: int = 0,
               cache_dir: str | os.PathLike = "data/cifar10c", key: str = "images",
               indices=None, digest: str | None = None) -> Path:
    """Where :func:`cached_corruption` keeps (`name`, `severity`, `seed`) of `images`:
    ``<cache_dir>/<key>/<name>-s<severity>-seed<seed>-<hash>-v<VERSION>.npy``. The hash covers the
    images, their indices and the versions of numpy/SciPy/scikit-image/OpenCV/PIL, so a change of
    any of them, or of VERSION, names another file. `digest` (from :func:`images_digest`) skips
    rehashing the images."""
    name = _check_name(name)
    severity = _check_severity(severity)
    seed = _check_seed(seed)
    if not key or any(ch in key for ch in "/\\") or key.startswith("."):
        raise ValueError(f"cache key {key!r}: expected a plain non-empty file name "
                         f"(no '/', no leading '.')")
    if digest is None:
        digest = images_digest(images, indices)
    full = hashlib.sha256(f"{digest};{_library_versions()}".encode()).hexdigest()[:16]
    return Path(cache_dir) / key / f"{name}-s{severity}-seed{seed}-{full}-v{VERSION}.npy"


def cached_corruption(images: np.ndarray, name: str, severity: int, seed: int = 0,
                      cache_dir: str | os.PathLike = "data/cifar10c", key: str = "images",
                      indices=None, digest: str | None = None) -> np.ndarray:
    """:func:`corrupt_c`, generated once and kept as .npy under `cache_dir` (data/ is gitignored),
    then read back. `key` names the image set (e.g. "primary_test"); the file name also holds a
    hash of the images and the code version (see :func:`cache_path`), so changed inputs or code
    never read a stale file. Written atomically (temporary file + rename)."""
    path = cache_path(images, name, severity, seed, cache_dir, key, indices, digest)
    if path.exists():
        try:
            out = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            out = None
        if out is not None and out.dtype == np.uint8 and out.shape == images.shape:
            return out
    out = corrupt_c(images, name, severity, seed, indices)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, out, allow_pickle=False)
    os.replace(tmp, path)
    return out


def iter_corruptions(images: np.ndarray, names: Sequence[str] | None = None,
                     severities: Sequence[int] | None = None, seed: int = 0,
                     cache_dir: str | os.PathLike | None = "data/cifar10c", key: str = "images",
                     indices=None) -> Iterator[tuple[str, int, np.ndarray]]:
    """(name, severity, corrupted images) for every corruption and severity asked (default: all
    15 x 5, in CIFAR-10-C's order), through the cache unless `cache_dir` is None. All names and
    severities are checked before anything is generated."""
    names = list(CORRUPTIONS_C if names is None else names)
    severities = list(SEVERITIES if severities is None else severities)
    for n in names:
        _check_name(n)
    for s in severities:
        _check_severity(s)
    digest = images_digest(images, indices) if cache_dir is not None else None
    for n in names:
        for s in severities:
            if cache_dir is None:
                yield n, s, corrupt_c(images, n, s, seed, indices)
            else:
                yield n, s, cached_corruption(images, n, s, seed, cache_dir, key, indices, digest)
