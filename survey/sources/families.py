"""Families of related synthetic representations, for benchmarks and tests at survey scale (no network to train).

A family is a base response matrix φ(S W) of `latent` dimensions (S: random stimulus features; W: the family's
weights, drawn around its super-family's, so families have relatives; φ: a random nonlinearity and gain). A member
mixes the base by a random near-identity invertible matrix, embeds it in 2/3, 1 or 4/3 × `units` units by a random
isometry and adds noise; mixing strength and noise grow along the family (graded levels). `write_representations`
stores a population as a stimulus set and `representations` rows, as the activations stage would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NONLINEARITIES = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "sin": np.sin,
    "abs": np.abs,
    "cubic": lambda x: x**3 / (1.0 + x**2),
}


@dataclass(frozen=True)
class Family:
    name: str
    superfamily: int
    nonlinearity: str
    base: np.ndarray  # m × latent, zero-mean columns
    noise: float  # noise at the top of the family's graded levels, relative to the signal's RMS
    mixing: float  # strength of the non-orthogonal mixing at the top level


class Synthetic:
    """Families of related representations over one set of random stimulus features (see the module docstring)."""

    def __init__(self, n_families: int, n_stimuli: int, units: int, seed: int, n_features: int = 16,
                 family_size: int = 10) -> None:
        rng = np.random.default_rng(seed)
        self.rng = np.random.default_rng(seed + 1)
        self.units, self.latent = units, max(2, units // 2)
        self.widths = sorted({max(self.latent, round(units * 2 / 3)), units, round(units * 4 / 3)})
        self.features = rng.normal(size=(n_stimuli, n_features))
        supers = rng.normal(size=(max(1, n_families // family_size), n_features, self.latent)) / np.sqrt(n_features)
        self.families = []
        for f in range(n_families):
            superfamily = f % len(supers)
            weights = supers[superfamily] + 0.6 * rng.normal(size=supers[superfamily].shape) / np.sqrt(n_features)
            name = sorted(NONLINEARITIES)[rng.integers(len(NONLINEARITIES))]
            base = NONLINEARITIES[name](rng.uniform(0.5, 2.0) * self.features @ weights)
            self.families.append(Family(f"synfam-{f:04d}", superfamily, name, base - base.mean(axis=0),
                                        noise=float(rng.uniform(0.2, 1.0)), mixing=float(rng.uniform(0.1, 0.6))))

    def member(self, family: Family, level: float, width: int | None = None) -> tuple[np.ndarray, dict]:
        """One member at `level` in (0, 1]: base · (I + level·mixing·G) · isometry into `width` units + noise."""
        rng = self.rng
        width = width or int(rng.choice(self.widths))
        mix = np.eye(self.latent) + level * family.mixing * rng.normal(size=(self.latent, self.latent)) / np.sqrt(
            self.latent)
        isometry = np.linalg.qr(rng.normal(size=(width, self.latent)))[0].T  # latent × width, orthonormal rows
        signal = family.base @ mix @ isometry
        sigma = level * family.noise * np.sqrt((signal**2).mean())
        array = (signal + sigma * rng.normal(size=signal.shape)).astype(np.float32)
        return array, {"family": family.name, "superfamily": family.superfamily, "level": round(float(level), 4),
                       "width": width, "nonlinearity": family.nonlinearity}

    def population(self, n: int) -> list[tuple[np.ndarray, dict]]:
        """n members spread over the families; within a family the levels are graded from low to high."""
        sizes = np.full(len(self.families), n // len(self.families))
        sizes[: n % len(self.families)] += 1
        out = []
        for family, size in zip(self.families, sizes, strict=True):
            out += [self.member(family, (j + 1) / size) for j in range(size)]
        return out

    def fresh(self, count: int) -> list[tuple[np.ndarray, dict]]:
        """Out-of-sample members: random families, levels and widths."""
        picks = self.rng.integers(len(self.families), size=count)
        return [self.member(self.families[f], float(self.rng.uniform(0.05, 1.0))) for f in picks]
