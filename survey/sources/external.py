"""Networks users bring: torchvision / timm architectures by name, or any ``package.module:callable``."""

from __future__ import annotations

import difflib
import importlib

from torch import nn

from survey.errors import SurveyError
from survey.sources.checkpoints import load_into


def build_external(kind: str, target: str, kwargs: dict | None = None, weights: str | None = None) -> nn.Module:
    """Build the module (random init unless `weights`, a local state dict, is given)."""
    kwargs = dict(kwargs or {})
    if kind == "torchvision":
        models = _optional("torchvision.models", "torchvision")
        try:
            module = models.get_model(target, weights=None, **kwargs)
        except (ValueError, TypeError) as err:
            raise SurveyError(f"torchvision model {target!r}: {_short(err)}; see torchvision.models.list_models()")
    elif kind == "timm":
        timm = _optional("timm", "timm")
        try:
            module = timm.create_model(target, pretrained=False, **kwargs)
        except (RuntimeError, TypeError) as err:
            raise SurveyError(f"timm model {target!r}: {_short(err)}; see timm.list_models()") from None
    elif kind == "callable":
        module = _call_target(target, kwargs)
    else:
        raise SurveyError(f"network kind {kind!r} is unknown; use torchvision, timm or callable")
    if weights:
        load_into(module, weights)
    return module


def _call_target(target: str, kwargs: dict) -> nn.Module:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SurveyError(f"network target {target!r} is not of the form 'package.module:callable'; fix `target`")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except ImportError as err:
        raise SurveyError(f"network target {target!r}: cannot import {module_name} ({_short(err)}); "
                          "install it or fix `target`") from None
    except AttributeError:
        raise SurveyError(f"network target {target!r}: {module_name} has no {attribute!r}; fix `target`") from None
    try:
        module = factory(**kwargs)
    except TypeError as err:
        raise SurveyError(f"network target {target!r} rejected kwargs {kwargs} ({_short(err)}); fix `kwargs`") from None
    if not isinstance(module, nn.Module):
        raise SurveyError(f"network target {target!r} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def _optional(module_name: str, extra: str):  # noqa: ANN202 - a module
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise SurveyError(f"{extra} is not installed; pip install 'neurosurvey[vision]' (with a torch that "
                          f"matches it) or use kind: callable") from None


def layer_names(module: nn.Module) -> tuple[str, ...]:
    """Every hookable submodule name (the root excluded), in definition order."""
    return tuple(name for name, _ in module.named_modules() if name)


def check_layers(module: nn.Module, requested: tuple[str, ...] | list[str], network_name: str) -> None:
    """Raise one clear line for the first requested layer the module does not have."""
    known = layer_names(module)
    for name in requested:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=6, cutoff=0.4)
            shown = ", ".join(close or known[:12]) + (" …" if not close and len(known) > 12 else "")
            raise SurveyError(f"network {network_name!r} has no layer {name!r}; known layers include: {shown}")


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:160]
