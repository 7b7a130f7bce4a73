"""The convolutional shape metric (Williams et al. 2021 §3.4): conv maps compared up to a rotation of the channels
(after channel whitening shared over positions) and a circular spatial shift;
⟨a, b⟩ = max over shifts s of ‖Σ_{i,p} x_w[i,:,p] y_w[i,:,p+s]ᵀ‖_*."""

from __future__ import annotations

import numpy as np
import torch

from survey.activations import pool_positions
from survey.errors import SurveyError
from survey.metrics.shape import Prepared, ShapeFamily, pad_columns, partial_whitening_scales, polar


class ConvMetric(ShapeFamily):
    def metric_input(self, array: np.ndarray, conv_size: int | None) -> np.ndarray:
        """The maps average-pooled to at most `conv_size` positions a side."""
        maps = torch.from_numpy(np.ascontiguousarray(array, np.float64))
        return pool_positions(maps, conv_size).numpy()

    def prepare(self, x: torch.Tensor, name: str) -> Prepared:
        """Channel whitening shared over positions; data = the whitened maps' 2-D spectra (m × C × H × W)."""
        m, channels, height, width = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, channels)
        if self.center:
            rows = rows - rows.mean(dim=0)
        _, s, vh = torch.linalg.svd(rows, full_matrices=False)
        transform = vh.mT @ torch.diag(partial_whitening_scales(s, self.alpha) / s.clamp_min(1e-300)) @ vh
        whitened = (rows @ transform).reshape(m, height, width, channels).permute(0, 3, 1, 2)
        return Prepared(torch.fft.fft2(whitened), float(torch.linalg.norm(whitened)))

    def cross_pair(self, a: Prepared, b: Prepared) -> float:
        return float(_per_shift(a.data, b.data).amax())

    def aligned(self, a: Prepared, b: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """The whitened maps x_w and Q y_w shifted by the best shift s (Q: Procrustes over channels at that shift)."""
        shift = np.unravel_index(int(_per_shift(a.data, b.data).argmax()), a.data.shape[2:])
        x, y = pad_columns(torch.fft.ifft2(a.data).real, torch.fft.ifft2(b.data).real, dim=1)
        y = torch.roll(y, (-int(shift[0]), -int(shift[1])), dims=(2, 3))  # y_s[p] = y[p + s]
        rotation = polar(torch.einsum("mahw,mbhw->ab", x, y))
        return x, torch.einsum("ab,mbhw->mahw", rotation, y)


def _per_shift(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """‖Σ_{i,p} x_w[i,:,p] y_w[i,:,p+s]ᵀ‖_* for every circular spatial shift s (H × W), from the maps' spectra: the
    channel cross-covariance at every shift is one inverse FFT."""
    if fa.shape[2:] != fb.shape[2:]:
        raise SurveyError(f"conv maps have spatial sizes {tuple(fa.shape[2:])} and {tuple(fb.shape[2:])}; "
                          "pool both to one height × width first")
    per_shift = torch.fft.ifft2(torch.einsum("mahw,mbhw->abhw", fa.conj(), fb)).real
    return torch.linalg.svdvals(per_shift.permute(2, 3, 0, 1)).sum(dim=-1)
