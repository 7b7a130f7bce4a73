"""Stimulus sets: determinism, shapes, geometry of each kind, and one-line errors for user arrays."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.transform
from pydantic import TypeAdapter, ValidationError
from scipy import ndimage

from survey import stimuli
from survey.errors import SurveyError
from survey.images import BUNDLED_IMAGES
from survey.stimuli import (
    ArrayFile,
    Gratings,
    NaturalPatches,
    ObjectManifolds,
    StimulusSpec,
    TuningGrid,
    validate_images,
)

SMALL = {
    "natural": NaturalPatches(name="natural", n=40, size=16),
    "gratings": Gratings(name="gratings", size=16, n_orientations=4, frequencies=(2.0, 4.0), n_phases=2),
    "object_manifolds": ObjectManifolds(name="objects", size=16, n_objects=5, n_transforms=4),
    "tuning_grid": TuningGrid(name="grid", size=16, n_angles=5, n_components=16),
}
EXPECTED = {  # rows, coords columns
    "natural": (40, 0),
    "gratings": (16, 3),
    "object_manifolds": (20, 4),
    "tuning_grid": (25, 2),
}


def _rotate_ccw(image: np.ndarray, angle: float) -> np.ndarray:
    return skimage.transform.rotate(image.transpose(1, 2, 0), angle, order=1).transpose(2, 0, 1)


@pytest.mark.parametrize("kind", list(SMALL))
def test_same_spec_same_arrays_and_hash_other_seed_differs(kind: str) -> None:
    spec = SMALL[kind]
    first = spec.generate()
    stimuli._patch_pca.cache_clear()  # the tuning grid's PCA must be refitted identically, not just cached
    second = spec.generate()
    for a, b in [(first.images, second.images), (first.labels, second.labels), (first.coords, second.coords)]:
        np.testing.assert_array_equal(a, b)
    assert first.content_hash() == second.content_hash()
    assert len(first.content_hash()) >= 32
    if kind != "gratings":  # gratings are fully determined by their parameters
        assert spec.model_copy(update={"seed": 1}).generate().content_hash() != first.content_hash()


@pytest.mark.parametrize("kind", list(SMALL))
def test_shapes_dtypes_and_value_range(kind: str) -> None:
    stimulus_set = SMALL[kind].generate()
    rows, k = EXPECTED[kind]
    assert stimulus_set.images.shape == (rows, 3, 16, 16)
    assert stimulus_set.images.dtype == np.float32 and stimulus_set.images.flags.c_contiguous
    assert stimulus_set.images.min() >= 0.0 and stimulus_set.images.max() <= 1.0
    assert stimulus_set.images.std() > 0.01
    assert stimulus_set.labels.shape == (rows,) and stimulus_set.labels.dtype == np.int64
    assert stimulus_set.coords.shape == (rows, k) and stimulus_set.coords.dtype == np.float32


def test_content_hash_sees_labels_and_coords() -> None:
    base = SMALL["gratings"].generate()
    relabelled = stimuli.StimulusSet(base.images, base.labels[::-1].copy(), base.coords)
    shifted = stimuli.StimulusSet(base.images, base.labels, base.coords + np.float32(1))
    assert len({base.content_hash(), relabelled.content_hash(), shifted.content_hash()}) == 3


def test_union_parses_each_kind_and_rejects_unknown_fields() -> None:
    adapter = TypeAdapter(StimulusSpec)
    for spec in SMALL.values():
        assert adapter.validate_python(spec.model_dump()) == spec
    assert isinstance(adapter.validate_python({"name": "x", "kind": "array", "path": "a.npy"}), ArrayFile)
    with pytest.raises(ValidationError):
        adapter.validate_python({"name": "x", "kind": "gratings", "n_orientation": 4})
    with pytest.raises(ValidationError):
        adapter.validate_python({"name": "x", "kind": "noise"})


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        (NaturalPatches, {"size": 4}),
        (NaturalPatches, {"n": 0}),
        (NaturalPatches, {"images": ("lena",)}),
        (NaturalPatches, {"images": ()}),
        (Gratings, {"frequencies": (2.0, 20.0)}),
        (Gratings, {"n_orientations": 0}),
        (Gratings, {"contrast": 0.0}),
        (ObjectManifolds, {"scale_range": (1.2, 0.8)}),
        (ObjectManifolds, {"n_transforms": 0}),
        (TuningGrid, {"n_angles": 10}),
        (TuningGrid, {"n_angles": 1}),
        (TuningGrid, {"size": 8, "n_components": 500}),
    ],
)
def test_validators_reject_bad_values(cls: type, fields: dict) -> None:
    with pytest.raises(ValidationError) as info:
        cls(name="bad", **fields)
    assert next(iter(fields)) in str(info.value)


def test_natural_labels_cover_every_image_evenly() -> None:
    stimulus_set = NaturalPatches(name="natural", n=100, size=16).generate()
    counts = np.bincount(stimulus_set.labels, minlength=len(BUNDLED_IMAGES))
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1 and counts.sum() == 100
    moon = NaturalPatches(name="moon", n=6, size=16, images=("moon",)).generate()
    assert np.allclose(moon.images[:, 0], moon.images[:, 1])  # grayscale source stays gray


def test_grating_orientation_and_frequency_from_fft_peak() -> None:
    spec = Gratings(name="gratings", size=32)
    stimulus_set = spec.generate()
    assert stimulus_set.images.shape[0] == 8 * 3 * 4
    pad = 256
    freqs = np.fft.fftfreq(pad) * spec.size
    for image, label, (orientation, cycles, _) in zip(
        stimulus_set.images, stimulus_set.labels, stimulus_set.coords, strict=True
    ):
        assert orientation == pytest.approx(label * 180 / 8)
        gray = image[0]
        assert abs(gray.mean() - 0.5) < 0.05
        spectrum = np.abs(np.fft.fft2(gray - gray.mean(), s=(pad, pad)))
        row, col = np.unravel_index(spectrum.argmax(), spectrum.shape)
        f_down, f_right = freqs[row], freqs[col]
        angle = np.rad2deg(np.arctan2(-f_down, f_right)) % 180  # counter-clockwise as displayed
        assert abs((angle - orientation + 90) % 180 - 90) < 2.0
        assert np.hypot(f_down, f_right) == pytest.approx(cycles, abs=0.3)
    vertical_bars = stimulus_set.images[0, 0]  # orientation 0: luminance varies along columns only
    assert np.allclose(vertical_bars, vertical_bars[:1]) and vertical_bars.std() > 0.3


def test_grating_contrast_and_channels() -> None:
    low = Gratings(name="g", size=16, contrast=0.2).generate().images
    assert np.array_equal(low[:, 0], low[:, 2])
    assert low.min() >= 0.4 - 1e-6 and low.max() <= 0.6 + 1e-6 and low.max() - low.min() > 0.19


def test_object_manifolds_group_rows_by_object() -> None:
    spec = ObjectManifolds(name="objects")
    stimulus_set = spec.generate()
    assert stimulus_set.images.shape == (16 * 16, 3, 32, 32)
    np.testing.assert_array_equal(stimulus_set.labels, np.repeat(np.arange(16), 16))
    dx, dy, angle, scale = stimulus_set.coords.T
    assert np.abs([dx, dy]).max() <= 0.15 * 32 and np.abs(angle).max() <= 30
    assert scale.min() >= 0.8 and scale.max() <= 1.25
    # Objects are different: the closest two object centroids are farther apart than a typical transform.
    flat = stimulus_set.images.reshape(16, 16, -1)
    centroids = flat.mean(axis=1)
    between = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)[np.triu_indices(16, 1)]
    within = np.linalg.norm(flat - centroids[:, None], axis=-1).mean()
    assert between.mean() > within and between.min() > 0.1 * within


def test_object_transforms_follow_the_documented_conventions() -> None:
    still = dict(name="objects", size=32, n_objects=4, n_transforms=3)
    identity = ObjectManifolds(**still, max_shift=0, max_rotation_deg=0, scale_range=(1, 1)).generate()
    base = identity.images[::3]
    assert all(np.array_equal(identity.images[3 * i + t], base[i]) for i in range(4) for t in range(3))
    assert min(np.abs(base[i] - base[j]).mean() for i in range(4) for j in range(i)) > 0.02

    shifted = ObjectManifolds(**still, max_rotation_deg=0, scale_range=(1, 1)).generate()
    inner = (slice(None), slice(6, -6), slice(6, -6))  # content that came from inside the base view
    for image, (dx, dy, _, _), label in zip(shifted.images, shifted.coords, shifted.labels, strict=True):
        expected = ndimage.shift(base[label], (0, dy, dx), order=1)  # +dx right, +dy down
        np.testing.assert_allclose(image[inner], expected[inner], atol=1e-5)

    rotated = ObjectManifolds(**still, max_shift=0, scale_range=(1, 1)).generate()
    rows, cols = np.mgrid[:32, :32]
    disk = np.hypot(rows - 15.5, cols - 15.5) < 14
    for image, (_, _, angle, _), label in zip(rotated.images, rotated.coords, rotated.labels, strict=True):
        np.testing.assert_allclose(image[:, disk], _rotate_ccw(base[label], angle)[:, disk], atol=1e-4)


def test_tuning_grid_layout_sphere_and_prototype() -> None:
    spec = TuningGrid(name="grid", size=16, n_angles=11, n_components=32)
    stimulus_set = spec.generate()
    n = 11
    theta, phi = stimulus_set.coords.reshape(n, n, 2).transpose(2, 0, 1)
    np.testing.assert_allclose(theta[:, 0], np.linspace(-90, 90, n))  # θ-major rows
    np.testing.assert_allclose(phi[0], np.linspace(-90, 90, n))
    np.testing.assert_array_equal(stimulus_set.labels, np.arange(n * n))

    latents = spec.latents()
    radius = np.sqrt(32)
    np.testing.assert_allclose(np.linalg.norm(latents, axis=1), radius, rtol=1e-6)
    centre = (n // 2) * n + n // 2
    assert tuple(stimulus_set.coords[centre]) == (0.0, 0.0)
    prototype = latents[centre] / radius
    cosine = latents @ prototype / radius  # angular distance from the prototype is cos θ cos φ
    expected = np.cos(np.deg2rad(stimulus_set.coords[:, 0])) * np.cos(np.deg2rad(stimulus_set.coords[:, 1]))
    np.testing.assert_allclose(cosine, expected, atol=1e-6)
    np.testing.assert_allclose(cosine.reshape(n, n), cosine.reshape(n, n)[::-1, ::-1], atol=1e-6)  # symmetric

    images = stimulus_set.images.reshape(n, n, 3, 16, 16)
    np.testing.assert_allclose(stimulus_set.images[centre], spec.decode(latents[centre][None])[0], atol=1e-6)
    coarse = spec.model_copy(update={"n_angles": 5}).generate()  # the prototype depends on the seed only
    np.testing.assert_allclose(coarse.images[2 * 5 + 2], stimulus_set.images[centre], atol=1e-6)
    for pole in (0, n - 1):  # φ = ±90°: the pole is one point, whatever θ
        np.testing.assert_allclose(images[:, pole], images[:1, pole].repeat(n, axis=0), atol=1e-5)
    assert np.abs(images[0, n // 2] - images[-1, n // 2]).mean() > 0.02  # θ = ±90° are antipodal
    assert np.abs(images[0, n // 2] - images[n // 2, n // 2]).mean() > 0.02


def test_tuning_grid_prototype_changes_with_seed() -> None:
    one, two = (TuningGrid(name="g", size=16, n_angles=3, n_components=16, seed=s).latents() for s in (0, 1))
    assert abs(one[4] @ two[4]) < 0.9 * 16


def _save(tmp_path, name: str, array: np.ndarray) -> str:
    path = tmp_path / name
    np.save(path, array)
    return str(path)


def test_array_file_nan_is_a_one_line_error_naming_the_path(tmp_path) -> None:
    images = np.full((3, 8, 8, 3), 0.5, np.float32)
    images[1, 2, 3, 0] = np.nan
    path = _save(tmp_path, "bad.npy", images)
    with pytest.raises(SurveyError) as info:
        ArrayFile(name="mine", path=path).generate()
    message = str(info.value)
    assert message == f"stimulus set 'mine': {path} has 1 non-finite values (NaN or inf); drop or impute them"
    assert "\n" not in message


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (np.array([{"a": 1}, None], dtype=object), "Python objects"),
        (np.zeros((4, 8), np.float32), "shape (4, 8)"),
        (np.zeros((2, 5, 8, 8), np.float32), "C = 1 or 3"),
        (np.full((2, 8, 8), 2.0, np.float32), "outside [0, 1]"),
        (np.full((2, 8, 8), np.inf, np.float32), "non-finite values (NaN or inf)"),
        (np.zeros((0, 8, 8), np.float32), "empty"),
    ],
)
def test_array_file_rejects_bad_arrays_in_one_line(tmp_path, array: np.ndarray, needle: str) -> None:
    path = _save(tmp_path, "x.npy", array)
    with pytest.raises(SurveyError) as info:
        ArrayFile(name="mine", path=path).generate()
    assert needle in str(info.value) and path in str(info.value) and "\n" not in str(info.value)


def test_array_file_missing_wrong_suffix_and_corrupt(tmp_path) -> None:
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"not numpy at all")
    for path in (tmp_path / "missing.npy", tmp_path / "images.png", corrupt):
        with pytest.raises(SurveyError) as info:
            ArrayFile(name="mine", path=str(path)).generate()
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_array_file_uint8_channels_last_and_grayscale(tmp_path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 10, 12, 3), dtype=np.uint8)
    loaded = ArrayFile(name="mine", path=_save(tmp_path, "u8.npy", pixels)).generate()
    assert loaded.images.shape == (4, 3, 10, 12) and loaded.images.dtype == np.float32
    np.testing.assert_allclose(loaded.images, pixels.transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(loaded.labels, np.arange(4))
    assert loaded.coords.shape == (4, 0)

    gray = rng.random((2, 9, 9)).astype(np.float32)
    loaded = ArrayFile(name="gray", path=_save(tmp_path, "gray.npy", gray)).generate()
    np.testing.assert_array_equal(loaded.images, np.repeat(gray[:, None], 3, axis=1))


def test_array_file_npz_with_labels(tmp_path) -> None:
    images = np.random.default_rng(0).random((5, 1, 8, 8))
    path = tmp_path / "set.npz"
    np.savez(path, images=images, labels=np.array([0, 0, 1, 1, 2]))
    loaded = ArrayFile(name="mine", path=str(path)).generate()
    np.testing.assert_array_equal(loaded.labels, [0, 0, 1, 1, 2])
    assert loaded.images.shape == (5, 3, 8, 8)
    np.savez(path, images=images, labels=np.zeros(3))
    with pytest.raises(SurveyError, match="labels"):
        ArrayFile(name="mine", path=str(path)).generate()
    np.savez(path, pictures=images)
    with pytest.raises(SurveyError, match="no array named 'images'"):
        ArrayFile(name="mine", path=str(path)).generate()


def test_validate_images_prefers_channels_first_and_returns_rgb() -> None:
    first = validate_images(np.zeros((2, 3, 5, 7)), "x")
    last = validate_images(np.zeros((2, 5, 7, 1)), "x")
    assert first.shape == (2, 3, 5, 7) and last.shape == (2, 3, 5, 7)
    assert first.dtype == np.float32 and last.flags.c_contiguous
    with pytest.raises(SurveyError, match="'x'"):
        validate_images(np.array(["a", "b"]), "x")
