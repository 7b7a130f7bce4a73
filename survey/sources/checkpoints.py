"""Safe checkpoint loading: safetensors or ``torch.load(weights_only=True)``, never arbitrary unpickling."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from survey.errors import SurveyError, one_line

_SAVE_HINT = "save model.state_dict() with torch.save or safetensors"


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a safetensors file, or a torch.save'd state dict (optionally wrapped
    as ``{"state_dict": ...}`` or ``{"model": ...}``), loaded without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise SurveyError(f"checkpoint {path} does not exist; fix the `weights` path")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise SurveyError(
                f"checkpoint {path} is not a readable safetensors file ({one_line(err, 160)}); "
                f"copy it again or re-save it: {_SAVE_HINT}"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or corrupt files surface as many exception types
        if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
            raise SurveyError(
                f"checkpoint {path} is not a plain state dict (weights_only=True refused it: {one_line(err, 160)}); "
                f"{_SAVE_HINT}"
            ) from None
        raise SurveyError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {one_line(err, 160)}); "
            f"copy it again or re-save it: {_SAVE_HINT}"
        ) from None
    if isinstance(state, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping):
        raise SurveyError(
            f"checkpoint {path} holds a {type(state).__name__}, not a mapping of parameter names to tensors; "
            f"{_SAVE_HINT}"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise SurveyError(
                f"checkpoint {path} is not a plain state dict: entry {key!r} is a {type(value).__name__}, "
                f"not a tensor; {_SAVE_HINT}"
            )
    return dict(state)


def load_into(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a checkpoint into `module` strictly; mismatched keys or shapes become one clear line."""
    state = load_state_dict(path)
    own = module.state_dict()
    problems = []
    if missing := [k for k in own if k not in state]:
        problems.append(f"missing {_first(missing)}")
    if unexpected := [k for k in state if k not in own]:
        problems.append(f"unexpected {_first(unexpected)}")
    shapes = [
        f"{k} {tuple(state[k].shape)} (network {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"shape mismatch {_first(shapes)}")
    if problems:
        raise SurveyError(
            f"checkpoint {path} does not fit the network ({'; '.join(problems)}); "
            "build the network the weights came from (check `target` and `kwargs`) or fix the `weights` path"
        )
    module.load_state_dict(state, strict=True)


def _first(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
