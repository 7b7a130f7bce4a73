"""Stimulus sets shown to every network and brain area of a survey; offline and deterministic from a seed.

Each spec is a frozen pydantic model with a `kind` discriminator and `generate() -> StimulusSet`;
`StimulusSpec` is the discriminated union of all of them.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from threadpoolctl import threadpool_limits

from survey.errors import SurveyError
from survey.hashing import array_hash
from survey.images import BUNDLED_IMAGES, bundled_image, cut_patches
from survey.validation import real_array

__all__ = [
    "ArrayFile",
    "Gratings",
    "NaturalPatches",
    "ObjectManifolds",
    "StimulusSet",
    "StimulusSpec",
    "TuningGrid",
    "validate_images",
]


@dataclass(frozen=True, eq=False)
class StimulusSet:
    """Images with per-image labels and coordinates; the meaning of both depends on the spec kind."""

    images: np.ndarray  # N × 3 × H × W float32 in [0, 1], C-contiguous
    labels: np.ndarray  # N int64
    coords: np.ndarray  # N × k float32 (k may be 0)

    def __post_init__(self) -> None:
        images, labels, coords = self.images, self.labels, self.coords
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.float32:
            raise ValueError(f"images must be N×3×H×W float32, got {images.shape} {images.dtype}")
        if not images.flags.c_contiguous:
            raise ValueError("images must be C-contiguous")
        n = images.shape[0]
        if labels.shape != (n,) or labels.dtype != np.int64:
            raise ValueError(f"labels must be ({n},) int64, got {labels.shape} {labels.dtype}")
        if coords.ndim != 2 or coords.shape[0] != n or coords.dtype != np.float32:
            raise ValueError(f"coords must be {n}×k float32, got {coords.shape} {coords.dtype}")

    def content_hash(self) -> str:
        """sha256 hex digest of the images, labels and coords (bytes, shapes and dtypes)."""
        return array_hash(self.images, self.labels, self.coords)


def _stimulus_set(images: np.ndarray, labels: np.ndarray, coords: np.ndarray) -> StimulusSet:
    return StimulusSet(
        images=np.ascontiguousarray(images, dtype=np.float32),
        labels=np.ascontiguousarray(labels, dtype=np.int64),
        coords=np.ascontiguousarray(coords, dtype=np.float32),
    )


def validate_images(images: np.ndarray, name: str, *, source: str = "the image array") -> np.ndarray:
    """Check user images and return them as N × 3 × H × W float32 in [0, 1] (C-contiguous).

    Accepts N×H×W, N×C×H×W or N×H×W×C with C in {1, 3} (channels-first wins when both fit);
    uint8 is divided by 255. Raises a one-line SurveyError naming `source` and the fix.
    """
    where = f"stimulus set {name!r}: {source}"
    images = real_array(images, where, (3, 4), "N×H×W, N×C×H×W or N×H×W×C", dtype=None)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[1] not in (1, 3) and images.shape[3] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.shape[1] not in (1, 3):
        raise SurveyError(
            f"{where} has shape {images.shape}; expected N×H×W, N×C×H×W or N×H×W×C with C = 1 or 3"
        )
    images = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise SurveyError(
            f"{where} has values in [{low:.4g}, {high:.4g}], outside [0, 1]; "
            "rescale to [0, 1] (e.g. divide 8-bit values by 255) and run again"
        )
    if images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    return np.ascontiguousarray(images, dtype=np.float32)


def _check_image_names(names: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        raise ValueError(f"give at least one image; choose from {', '.join(BUNDLED_IMAGES)}")
    unknown = [n for n in names if n not in BUNDLED_IMAGES]
    if unknown:
        raise ValueError(f"unknown image(s) {', '.join(unknown)}; choose from {', '.join(BUNDLED_IMAGES)}")
    return names


def _image_too_small(name: str, image_name: str, what: str) -> SurveyError:
    height, width, _ = bundled_image(image_name).shape
    return SurveyError(
        f"stimulus set {name!r}: bundled image {image_name!r} ({height}×{width}) is too small for {what}; "
        f"lower `size` or drop {image_name!r} from `images`"
    )


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="the user's name for the stimulus set")
    size: int = Field(32, ge=8, description="image height and width in pixels")
    seed: int = 0


class NaturalPatches(_Spec):
    """`n` random square patches cut evenly from natural images; label = index of the source image."""

    kind: Literal["natural"] = "natural"
    n: int = Field(256, ge=1)
    images: tuple[str, ...] = BUNDLED_IMAGES

    _check_images = field_validator("images")(_check_image_names)

    def generate(self) -> StimulusSet:
        rng = np.random.default_rng(self.seed)
        per_image, extra = divmod(self.n, len(self.images))
        patches, labels = [], []
        for index, image_name in enumerate(self.images):
            count = per_image + (index < extra)
            image = bundled_image(image_name)
            if min(image.shape[:2]) < self.size:
                raise _image_too_small(self.name, image_name, f"{self.size}-pixel patches")
            if count:
                patches.append(cut_patches(image, count, self.size, rng))
                labels.append(np.full(count, index))
        return _stimulus_set(np.concatenate(patches), np.concatenate(labels), np.zeros((self.n, 0)))


class Gratings(_Spec):
    """Full-field sinusoidal gratings, grayscale on 3 channels, mean 0.5.

    Rows are orientation-major, then frequency, then phase; label = orientation index;
    coords = (orientation_deg, cycles_per_image, phase_rad). Orientation is the direction of the
    luminance modulation (wave vector), counter-clockwise from the horizontal axis as displayed, so 0° gives
    vertical bars; phase 0 puts a bright bar through the image centre. `seed` is unused (nothing is random).
    """

    kind: Literal["gratings"] = "gratings"
    n_orientations: int = Field(8, ge=1)
    frequencies: tuple[float, ...] = Field((2.0, 4.0, 8.0), min_length=1, description="cycles per image")
    n_phases: int = Field(4, ge=1)
    contrast: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _check_frequencies(self) -> Gratings:
        bad = [f for f in self.frequencies if not 0.0 < f <= self.size / 2]
        if bad:
            raise ValueError(
                f"frequencies {bad} out of range; use cycles per image in (0, size/2 = {self.size / 2:g}]"
            )
        return self

    def generate(self) -> StimulusSet:
        orientations = np.arange(self.n_orientations) * (180.0 / self.n_orientations)
        phases = np.arange(self.n_phases) * (2 * np.pi / self.n_phases)
        grid = np.array(np.meshgrid(orientations, self.frequencies, phases, indexing="ij")).reshape(3, -1)
        theta, freq, phase = np.deg2rad(grid[0]), grid[1], grid[2]
        centre = (self.size - 1) / 2
        x = np.arange(self.size) - centre  # columns, rightwards
        y = centre - np.arange(self.size)  # rows, upwards
        k_x = (2 * np.pi * freq * np.cos(theta) / self.size)[:, None, None]
        k_y = (2 * np.pi * freq * np.sin(theta) / self.size)[:, None, None]
        wave = np.cos(k_x * x[None, None, :] + k_y * y[None, :, None] + phase[:, None, None])
        gray = 0.5 + 0.5 * self.contrast * wave
        images = np.repeat(gray[:, None], 3, axis=1)
        labels = np.repeat(np.arange(self.n_orientations), len(self.frequencies) * self.n_phases)
        return _stimulus_set(np.clip(images, 0.0, 1.0), labels, grid.T)


class ObjectManifolds(_Spec):
    """`n_objects` base images, each under `n_transforms` random shifts, rotations and scalings.

    Each object is one manifold: rows are grouped by object and label = object index. Base objects are
    high-contrast crops from the images (cycled through, spread over the width when an image is reused),
    downsampled 2× so the view covers 2·size source pixels; transforms sample the surrounding context
    (reflect padding beyond it). coords = (dx, dy, angle_deg, scale): dx > 0 moves content right and dy > 0
    down (pixels), angle is counter-clockwise as displayed, scale > 1 enlarges. Base objects depend only on
    `seed`, `size`, `images` and `n_objects`, not on the transform ranges.
    """

    kind: Literal["object_manifolds"] = "object_manifolds"
    n_objects: int = Field(16, ge=1)
    n_transforms: int = Field(16, ge=1)
    max_shift: float = Field(0.15, ge=0.0, le=0.5, description="largest shift as a fraction of size")
    max_rotation_deg: float = Field(30.0, ge=0.0, le=180.0)
    scale_range: tuple[float, float] = (0.8, 1.25)
    images: tuple[str, ...] = BUNDLED_IMAGES

    _check_images = field_validator("images")(_check_image_names)

    @field_validator("scale_range")
    @classmethod
    def _check_scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= value[1]:
            raise ValueError(f"scale_range {value} must satisfy 0 < low <= high, e.g. (0.8, 1.25)")
        return value

    def generate(self) -> StimulusSet:
        from scipy import ndimage  # here, not at import: configs (and `survey sql`) load this module

        rng = np.random.default_rng(self.seed)
        margin = self.size // 2
        contexts = self._base_contexts(rng, self.size + 2 * margin)
        n, size = self.n_transforms, self.size
        shift = self.max_shift * size
        dx = rng.uniform(-shift, shift, (self.n_objects, n))
        dy = rng.uniform(-shift, shift, (self.n_objects, n))
        angle = rng.uniform(-self.max_rotation_deg, self.max_rotation_deg, (self.n_objects, n))
        scale = np.exp(rng.uniform(*np.log(self.scale_range), (self.n_objects, n)))
        images = np.empty((self.n_objects, n, 3, size, size), np.float32)
        centre_out = (size - 1) / 2
        centre_in = centre_out + margin
        for obj, context in enumerate(contexts):
            for t in range(n):
                a = np.deg2rad(angle[obj, t])
                # output (row, col) -> context (row, col): inverse of scale · rotation, then shift.
                matrix = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) / scale[obj, t]
                offset = centre_in - matrix @ (centre_out + np.array([dy[obj, t], dx[obj, t]]))
                for channel in range(3):
                    images[obj, t, channel] = ndimage.affine_transform(
                        context[channel], matrix, offset, output_shape=(size, size), order=1, mode="reflect"
                    )
        coords = np.stack([dx, dy, angle, scale], axis=-1).reshape(-1, 4)
        labels = np.repeat(np.arange(self.n_objects), n)
        return _stimulus_set(np.clip(images.reshape(-1, 3, size, size), 0.0, 1.0), labels, coords)

    def _base_contexts(self, rng: np.random.Generator, side: int) -> list[np.ndarray]:
        """One 3 × side × side half-resolution crop per object; the central size × size is the base view."""
        uses = [list(range(j, self.n_objects, len(self.images))) for j in range(len(self.images))]
        contexts: list[np.ndarray] = [np.empty(0)] * self.n_objects
        for image_name, objects in zip(self.images, uses, strict=True):
            if not objects:
                continue
            image = _half_resolution(image_name)
            height, width, _ = image.shape
            if min(height, width) < side:
                raise _image_too_small(self.name, image_name, f"object crops at size {self.size}")
            slot = (width - side + 1) / len(objects)
            for k, obj in enumerate(objects):
                ys = rng.integers(0, height - side + 1, 8)
                xs = rng.integers(int(k * slot), max(int((k + 1) * slot), int(k * slot) + 1), 8)
                crops = [image[y : y + side, x : x + side] for y, x in zip(ys, xs, strict=True)]
                inner = slice(self.size // 2, self.size // 2 + self.size)
                best = max(crops, key=lambda crop: float(crop[inner, inner].std()))
                contexts[obj] = np.ascontiguousarray(best.transpose(2, 0, 1))
        return contexts


@cache
def _half_resolution(image_name: str) -> np.ndarray:
    image = bundled_image(image_name)
    height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return image[:height, :width].reshape(height // 2, 2, width // 2, 2, 3).mean(axis=(1, 3))


_PCA_PATCHES = 4000


@lru_cache(maxsize=8)
def _patch_pca(size: int, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, components, stds) of `_PCA_PATCHES` natural patches (flattened 3 × size × size).

    Leading components by a seeded randomized SVD (range finder with power iterations, numpy only): a full
    SVD of 4000 × 3072 takes ~10 s, this under 1 s for the same leading subspace. BLAS runs single-threaded so
    the result (and the content hash) does not depend on the thread count and shared cores do not thrash.
    """
    rng = np.random.default_rng(seed)
    per_image, extra = divmod(_PCA_PATCHES, len(BUNDLED_IMAGES))
    patches = np.concatenate([
        cut_patches(bundled_image(name), per_image + (i < extra), size, rng)
        for i, name in enumerate(BUNDLED_IMAGES)
    ]).reshape(_PCA_PATCHES, -1)
    mean = patches.mean(axis=0)
    patches -= mean
    sketch = rng.standard_normal((patches.shape[1], n_components + 32)).astype(np.float32)
    with threadpool_limits(1, user_api="blas"):
        basis = np.linalg.qr(patches @ sketch)[0]
        for _ in range(6):
            basis = np.linalg.qr(patches @ np.linalg.qr(patches.T @ basis)[0])[0]
        _, singular, components = np.linalg.svd(basis.T @ patches, full_matrices=False)
    components = components[:n_components]
    signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
    stds = singular[:n_components] / np.float32(math.sqrt(_PCA_PATCHES - 1))
    return mean, components * signs[:, None], stds


class TuningGrid(_Spec):
    """Images on a 2-D hemisphere around a prototype in a latent space (Wang & Ponce 2022, "On the Level Sets
    and Invariance of Neural Tuning Landscapes").

    The latent space is the whitened PCA space (`n_components`) of natural patches; with a random unit
    prototype e1 and orthonormal e2, e3, z(θ, φ) = r (cos θ cos φ e1 + sin θ cos φ e2 + sin φ e3) with
    r = sqrt(n_components) and image = mean + PCs · (σ ⊙ z), clipped to [0, 1]. θ, φ = linspace(-90°, 90°,
    n_angles); rows are θ-major (index = i_theta · n_angles + i_phi); label = grid index;
    coords = (theta_deg, phi_deg).
    """

    kind: Literal["tuning_grid"] = "tuning_grid"
    n_angles: int = 21
    n_components: int = Field(64, ge=3)

    @field_validator("n_angles")
    @classmethod
    def _check_n_angles(cls, value: int) -> int:
        if value < 3 or value % 2 == 0:
            raise ValueError(f"n_angles must be odd and >= 3 so the grid has a centre, e.g. 21; got {value}")
        return value

    @model_validator(mode="after")
    def _check_components(self) -> TuningGrid:
        limit = min(3 * self.size * self.size, _PCA_PATCHES)
        if self.n_components > limit:
            raise ValueError(f"n_components {self.n_components} exceeds {limit} (3·size² or the patch count)")
        return self

    def angles(self) -> np.ndarray:
        """(θ, φ) in degrees for every grid row, shape n_angles² × 2."""
        axis = np.linspace(-90.0, 90.0, self.n_angles)
        return np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)

    def latents(self) -> np.ndarray:
        """Whitened latent vector of every grid row (n_angles² × n_components); row at θ = φ = 0 is r·e1."""
        rng = np.random.default_rng([self.seed, 1])
        e1, e2, e3 = np.linalg.qr(rng.standard_normal((self.n_components, 3)))[0].T
        theta, phi = np.deg2rad(self.angles()).T
        directions = (
            np.outer(np.cos(theta) * np.cos(phi), e1)
            + np.outer(np.sin(theta) * np.cos(phi), e2)
            + np.outer(np.sin(phi), e3)
        )
        return math.sqrt(self.n_components) * directions

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Images (M × 3 × size × size float32 in [0, 1]) for whitened latent vectors (M × n_components)."""
        mean, components, stds = _patch_pca(self.size, self.n_components, self.seed)
        with threadpool_limits(1, user_api="blas"):
            pixels = mean + (np.asarray(latents, dtype=np.float32) * stds) @ components
        return np.clip(pixels, 0.0, 1.0).astype(np.float32).reshape(-1, 3, self.size, self.size)

    def generate(self) -> StimulusSet:
        angles = self.angles()
        return _stimulus_set(self.decode(self.latents()), np.arange(len(angles)), angles)


class ArrayFile(_Spec):
    """A user's images: `.npy` (N×H×W, N×C×H×W or N×H×W×C, C in {1, 3}) or `.npz` (key `images`,
    optional integer `labels`; default label = row index). `size` and `seed` are ignored: H, W come from
    the file."""

    kind: Literal["array"] = "array"
    path: str = Field(min_length=1)

    def generate(self) -> StimulusSet:
        where = f"stimulus set {self.name!r}: {self.path}"
        path = Path(self.path)
        if path.suffix not in (".npy", ".npz"):
            raise SurveyError(f"{where} is not a .npy or .npz file; save the images with numpy.save or savez")
        if not path.is_file():
            raise SurveyError(f"{where} does not exist; check the path (relative to the working directory)")
        try:
            loaded = np.load(path, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    images, labels = self._read_npz(loaded)
            else:
                images, labels = loaded, None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise self._load_error(error) from None
        images = validate_images(images, self.name, source=self.path)
        if labels is None:
            labels = np.arange(images.shape[0])
        elif labels.dtype.kind not in "iu" or labels.shape != (images.shape[0],):
            raise SurveyError(
                f"{where}: `labels` has shape {labels.shape} and dtype {labels.dtype}; "
                f"save one integer per image (shape ({images.shape[0]},), e.g. labels.astype(int))"
            )
        return _stimulus_set(images, labels, np.zeros((images.shape[0], 0)))

    def _read_npz(self, loaded: np.lib.npyio.NpzFile) -> tuple[np.ndarray, np.ndarray | None]:
        if "images" not in loaded.files:
            raise SurveyError(
                f"stimulus set {self.name!r}: {self.path} has no array named 'images' (found: "
                f"{', '.join(loaded.files) or 'none'}); save with numpy.savez(path, images=..., labels=...)"
            )
        return loaded["images"], loaded["labels"] if "labels" in loaded.files else None

    def _load_error(self, error: Exception) -> SurveyError:
        where = f"stimulus set {self.name!r}: {self.path}"
        if "pickle" in str(error).lower():
            return SurveyError(
                f"{where} holds pickled Python objects (not loaded, unsafe) or is not a NumPy file; save a "
                "numeric array, e.g. numpy.save(path, numpy.asarray(images, dtype=numpy.float32))"
            )
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return SurveyError(f"{where} is not a readable NumPy file ({reason}); re-save it with numpy.save")


StimulusSpec = Annotated[
    NaturalPatches | Gratings | ObjectManifolds | TuningGrid | ArrayFile,
    Field(discriminator="kind"),
]
