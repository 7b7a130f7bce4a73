"""The checks every entry point applies to what it is given, in one place: arrays of real numbers, counts, devices.

Each raises one SurveyError that names the input and says what to pass; callers add only their own rules (a shape
that means something to them, a value range).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from survey.errors import SurveyError

if TYPE_CHECKING:
    import torch


def real_array(value: Any, name: str, ndims: tuple[int, ...] | None = None, layout: str | None = None,
               dtype: type | None = np.float64, finite: bool = True) -> np.ndarray:
    """`value` as a C-contiguous `dtype` array (None: its own) if it holds real numbers (no bool, complex, string or
    object values),
    finite unless `finite` is False (the caller names the bad entry itself), with one of `ndims` dimensions
    (described by `layout`) and no empty axis."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:  # ragged nested lists
        raise SurveyError(f"{name} is not a numeric array ({error}); pass a rectangular array of real numbers"
                          ) from None
    if array.dtype.kind not in "iuf":
        raise SurveyError(f"{name} is not a numeric array: dtype {array.dtype} is not real-valued; pass real numbers")
    if ndims is not None and array.ndim not in ndims:
        wanted = " or ".join(f"{n}-D" for n in ndims)
        raise SurveyError(f"{name} has shape {array.shape}; pass a {wanted} array" + (f" ({layout})" if layout else ""))
    if array.size == 0:
        raise SurveyError(f"{name} is empty (shape {array.shape}); pass a non-empty array")
    array = np.ascontiguousarray(array, dtype=dtype)
    bad = int(np.count_nonzero(~np.isfinite(array))) if finite else 0
    if bad:
        raise SurveyError(f"{name} has {bad} non-finite values (NaN or inf); drop or impute them")
    return array


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """`value` as an int if it is an integer (not a bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum or (
            maximum is not None and value > maximum):
        bound = f"≥ {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise SurveyError(f"{name}={value!r} must be an integer {bound}; pass one such as {name}={minimum}")
    return int(value)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A torch device: None or "auto" is CUDA when there is one, else the CPU; "cuda" without CUDA is an error."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise SurveyError(f"device={device!r} is not a torch device; pass 'cpu', 'cuda' or 'auto'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SurveyError(f"device={device!r} but CUDA is not available here; pass device='cpu' or 'auto'")
    return resolved
