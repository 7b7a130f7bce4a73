"""The linear shape metric with partial whitening (Williams et al. 2021 §3.1, eq. 6): alpha = 0 is CCA, 1 Procrustes;
⟨a, b⟩ = max over rotations Q of tr(F_aᵀ F_b Q) = ‖F_aᵀ F_b‖_* for the whitened thin factors F."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from survey.metrics.shape import (
    Prepared,
    ShapeFamily,
    factor_cross,
    nuclear_norms,
    pad_columns,
    partial_whitening_scales,
    polar,
)


class LinearMetric(ShapeFamily):
    def prepare(self, x: torch.Tensor, name: str) -> Prepared:
        """The centred representation's thin factor U·s_w (s_w: its partially whitened singular values)."""
        if self.center:
            x = x - x.mean(dim=0)
        u, s, _ = torch.linalg.svd(x, full_matrices=False)
        scales = partial_whitening_scales(s, self.alpha)
        return Prepared(u * scales, float(torch.linalg.norm(scales)))

    def cross_pair(self, a: Prepared, b: Prepared) -> float:
        return float(torch.linalg.svdvals(a.data.mT @ b.data).sum())

    def cross(self, rows: Sequence[Prepared], cols: Sequence[Prepared],
              pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return factor_cross(rows, cols, pairs, nuclear_norms)

    def aligned(self, a: Prepared, b: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """The thin factors, b's rotated by the Procrustes solution."""
        fa, fb = pad_columns(a.data, b.data)
        return fa, fb @ polar(fb.mT @ fa)
