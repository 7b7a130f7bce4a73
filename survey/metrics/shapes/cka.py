"""Angular CKA (Williams et al. 2021 §3.3): the angle between the centred Gram matrices K = X Xᵀ, each of unit
Frobenius norm; ⟨a, b⟩ = ⟨K̂_a, K̂_b⟩_F = ‖F_aᵀ F_b‖_F² for the factors F = U s / ‖s²‖^½ (K̂ = F Fᵀ)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from survey.metrics.shape import Prepared, ShapeFamily, factor_cross


class AngularCKA(ShapeFamily):
    def prepare(self, x: torch.Tensor, name: str) -> Prepared:
        if self.center:
            x = x - x.mean(dim=0)
        u, s, _ = torch.linalg.svd(x, full_matrices=False)
        gram_norm = torch.linalg.norm(s.square())
        return Prepared(u * s / gram_norm.clamp_min(1e-300).sqrt(), 1.0 if gram_norm > 0 else 0.0)

    def cross_pair(self, a: Prepared, b: Prepared) -> float:
        return float((a.data.mT @ b.data).square().sum())

    def cross(self, rows: Sequence[Prepared], cols: Sequence[Prepared],
              pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return factor_cross(rows, cols, pairs, lambda blocks: blocks.square().sum(dim=(-2, -1)))

    def aligned(self, a: Prepared, b: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """The points K̂ in the basis of one QR of [F_a, F_b]: R_a R_aᵀ and R_b R_bᵀ have the Grams' norms and
        distance with no m × m matrix and no cancellation."""
        r = torch.linalg.qr(torch.cat([a.data, b.data], dim=1), mode="r")[1]
        ra, rb = r[:, :a.data.shape[1]], r[:, a.data.shape[1]:]
        return ra @ ra.mT, rb @ rb.mT
