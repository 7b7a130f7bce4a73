"""Networks users bring: torchvision / timm architectures by name, or any ``package.module:callable``."""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Iterable
from types import ModuleType

from torch import nn

from survey.errors import SurveyError, one_line
from survey.sources.checkpoints import load_into

KINDS = ("torchvision", "timm", "callable")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
MAX_LISTED = 12  # layer names shown in an unknown-layer error


def build_external(
    kind: str, target: str, kwargs: dict | None = None, weights: str | None = None
) -> nn.Module:
    """Build the module (random init unless `weights`, a local state dict, is given), in eval mode."""
    kwargs = dict(kwargs or {})
    if kind == "torchvision":
        models = _optional("torchvision.models", "torchvision")
        try:
            module = models.get_model(target, weights=None, **kwargs)
        except (ValueError, TypeError, KeyError) as err:
            raise SurveyError(
                f"torchvision model {target!r}: {one_line(err, 160)}; see torchvision.models.list_models()"
            ) from None
    elif kind == "timm":
        timm = _optional("timm", "timm")
        try:
            module = timm.create_model(target, pretrained=False, **kwargs)
        except (RuntimeError, TypeError, ValueError, KeyError) as err:
            raise SurveyError(f"timm model {target!r}: {one_line(err, 160)}; see timm.list_models()") from None
    elif kind == "callable":
        module = _call_target(target, kwargs)
    else:
        raise SurveyError(f"network kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    if weights:
        load_into(module, weights)
    return module.eval()


def _call_target(target: str, kwargs: dict) -> nn.Module:
    if not _TARGET.match(target):
        raise SurveyError(f"network target {target!r} is not 'package.module:callable'; fix `target`")
    module_name, attribute = target.split(":")
    try:
        factory = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or whatever the module raises while it is imported
        raise SurveyError(
            f"network target {target!r}: cannot import {module_name} ({type(err).__name__}: {one_line(err, 160)}); "
            "install it or fix `target`"
        ) from None
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise SurveyError(f"network target {target!r}: {module_name} has no {attribute!r}; fix `target`")
        factory = getattr(factory, part)
    if not callable(factory):
        kind = type(factory).__name__
        raise SurveyError(f"network target {target!r} is a {kind}, not a callable; fix `target`")
    try:
        module = factory(**kwargs)
    except Exception as err:  # the user's code: report it in one line
        raise SurveyError(
            f"network target {target!r} failed with kwargs {kwargs} ({type(err).__name__}: {one_line(err, 160)}); "
            "fix `kwargs` or the function"
        ) from None
    if not isinstance(module, nn.Module):
        raise SurveyError(
            f"network target {target!r} returned a {type(module).__name__}, not a torch.nn.Module; "
            "fix `target`"
        )
    return module


def _optional(module_name: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise SurveyError(
            f"{extra} is not installed (network kind {extra!r} needs it); "
            "pip install 'neurosurvey[vision]' (with a torch that matches it) or use kind: callable"
        ) from None


def layer_names(module: nn.Module) -> tuple[str, ...]:
    """Every hookable submodule name (the root excluded), in definition order."""
    return tuple(name for name, _ in module.named_modules() if name)


def check_layers(module: nn.Module, requested: Iterable[str], network_name: str) -> None:
    """Raise one clear line for the first requested layer the module does not have (close matches first)."""
    known = layer_names(module)
    for name in requested:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=MAX_LISTED, cutoff=0.5)
            shown = close + [k for k in known if k not in close][: MAX_LISTED - len(close)]
            more = ", ..." if len(known) > len(shown) else ""
            raise SurveyError(
                f"network {network_name!r} has no layer {name!r}; "
                f"known layers include: {', '.join(shown)}{more} (see `survey layers`)"
            )
