"""The permutation shape metric (Williams et al. 2021 §3.1): units matched one to one; ⟨a, b⟩ = max over permutations
P of tr(Xᵀ Y P), a linear assignment on the units' cross products."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from survey.metrics.shape import Prepared, ShapeFamily, pad_columns


class PermutationMetric(ShapeFamily):
    def prepare(self, x: torch.Tensor, name: str) -> Prepared:
        if self.center:
            x = x - x.mean(dim=0)
        return Prepared(x, float(torch.linalg.norm(x)))

    def cross_pair(self, a: Prepared, b: Prepared) -> float:
        gains = (a.data.mT @ b.data).cpu().numpy()
        row, col = linear_sum_assignment(gains, maximize=True)
        return float(gains[row, col].sum())

    def aligned(self, a: Prepared, b: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """The units of both, the narrower zero-padded, in matched order."""
        fa, fb = pad_columns(a.data, b.data)
        row, col = linear_sum_assignment((fa.mT @ fb).cpu().numpy(), maximize=True)
        return fa[:, torch.from_numpy(row)], fb[:, torch.from_numpy(col)]
