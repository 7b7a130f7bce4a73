"""Natural images bundled with scikit-image and scikit-learn (no download), and patch cutting."""

from __future__ import annotations

import io
from functools import cache

import numpy as np

# Photographs and textures that ship inside the scikit-image wheel and scikit-learn's sample images.
SKIMAGE_IMAGES = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "rocket",
)
SKLEARN_IMAGES = ("china", "flower")
BUNDLED_IMAGES = SKIMAGE_IMAGES + SKLEARN_IMAGES


def _as_rgb_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    image = image.astype(np.float32) / scale
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


@cache
def bundled_image(name: str) -> np.ndarray:
    """One bundled image as H × W × 3 float32 in [0, 1] (grayscale images are replicated to RGB)."""
    if name in SKIMAGE_IMAGES:
        import skimage.data

        return _as_rgb_float(getattr(skimage.data, name)())
    if name in SKLEARN_IMAGES:
        from sklearn.datasets import load_sample_image

        return _as_rgb_float(load_sample_image(f"{name}.jpg"))
    raise KeyError(f"unknown bundled image {name!r}; choose from {', '.join(BUNDLED_IMAGES)}")


def cut_patches(
    image: np.ndarray,
    n: int,
    size: int,
    rng: np.random.Generator,
    x_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Cut `n` random square patches (n × 3 × size × size) whose columns lie in the fraction `x_range` of the width.

    Restricting columns lets a train and a test split come from disjoint parts of the same image.
    """
    height, width, _ = image.shape
    x_lo = int(x_range[0] * width)
    x_hi = int(x_range[1] * width) - size
    if x_hi < x_lo or height < size:
        raise ValueError(f"image of {height}×{width} too small for {size}-pixel patches in columns {x_range}")
    ys = rng.integers(0, height - size + 1, n)
    xs = rng.integers(x_lo, x_hi + 1, n)
    patches = np.stack([image[y : y + size, x : x + size] for y, x in zip(ys, xs, strict=True)])
    return np.ascontiguousarray(patches.transpose(0, 3, 1, 2))


def png_bytes(image: np.ndarray) -> bytes:
    """A C × H × W image (any range) as PNG bytes, min–max scaled to 0…255 (grey for C = 1, RGB for C = 3)."""
    from PIL import Image

    low, high = float(image.min()), float(image.max())
    scaled = np.zeros_like(image) if high <= low else (image - low) / (high - low)
    pixels = np.ascontiguousarray((np.moveaxis(scaled, 0, -1) * 255).round().astype(np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()
