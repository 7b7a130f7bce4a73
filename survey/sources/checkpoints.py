"""Safe checkpoint loading: safetensors or ``torch.load(weights_only=True)``; never unpickle arbitrary objects."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from survey.errors import SurveyError

_SAVE_HINT = "save model.state_dict() with torch.save or safetensors"


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a safetensors file, or a torch.save'd state dict (optionally wrapped
    as ``{"state_dict": ...}`` or ``{"model": ...}``), loaded without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise SurveyError(f"checkpoint {path} does not exist; fix the `weights` path")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise SurveyError(f"checkpoint {path} is not a readable safetensors file ({_short(err)}); "
                              f"{_SAVE_HINT}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for refused or corrupt pickles
        raise SurveyError(f"checkpoint {path} is not a plain state dict (weights_only=True refused it: "
                          f"{_short(err)}); {_SAVE_HINT}") from None
    if isinstance(state, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise SurveyError(f"checkpoint {path} holds a {type(state).__name__}, not a mapping of names to tensors; "
                          f"{_SAVE_HINT}")
    return dict(state)


def load_into(module: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint into `module` strictly; mismatched keys become one clear line."""
    state = load_state_dict(path)
    result = module.load_state_dict(state, strict=False)
    problems = [f"missing {_first(result.missing_keys)}" if result.missing_keys else "",
                f"unexpected {_first(result.unexpected_keys)}" if result.unexpected_keys else ""]
    problems = [p for p in problems if p]
    if problems:
        raise SurveyError(f"checkpoint {path} does not fit the network ({'; '.join(problems)}); "
                          "check that `target` and `kwargs` build the architecture the weights came from")


def _first(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:160] + ("…" if len(text) > 160 else "")
