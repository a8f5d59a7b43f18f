"""Model registry: a dict, a decorator and an explicit import list (timm's pattern, smaller)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgecnn.errors import ModelNotFoundError

__all__ = ["ModelSpec", "register_model", "list_models", "get_model_spec", "build_model"]


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A registered architecture: its builder, default input size, and the keyword options its
    builder takes (read once, at registration, so that callers never inspect builders)."""

    name: str
    builder: Callable[..., Any]
    input_size: tuple[int, int]
    family: str
    task: str  # what it is trained for: classify, segment or detect (the card's task)
    description: str
    options: frozenset[str]  # keyword arguments beyond num_classes and input_shape, e.g. {"width", "dropout"}
    any_option: bool  # the builder takes **kwargs

    def takes(self, option: str) -> bool:
        """Whether the builder accepts the keyword argument ``option`` (``width``, ``dropout``, ...)."""
        return self.any_option or option in self.options


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, input_size: tuple[int, int], family: str, task: str = "classify") -> Callable:
    """Register ``fn(num_classes, *, input_shape, **kwargs) -> keras.Model`` under ``name``, a
    model for ``task`` (classify, segment or detect).

    Raises:
        ValueError: if the name is taken (a duplicate is a programming error).
    """

    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"Model name {name!r} is already registered.")
        doc = (fn.__doc__ or "").strip().splitlines()
        params = list(inspect.signature(fn).parameters.values())[1:]  # after num_classes
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        _REGISTRY[name] = ModelSpec(
            name=name, builder=fn, input_size=(int(input_size[0]), int(input_size[1])), family=family, task=task,
            description=doc[0] if doc else "", any_option=any(p.kind is p.VAR_KEYWORD for p in params),
            options=frozenset(p.name for p in params if p.kind in named and p.name != "input_shape"))
        return fn

    return decorator


def _ensure_loaded() -> None:
    from edgecnn.train import architectures  # noqa: F401  (registers the zoo)


def list_models(family: str | None = None) -> list[str]:
    """Names of the registered models, sorted, optionally of one family."""
    _ensure_loaded()
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def get_model_spec(name: str) -> ModelSpec:
    """Look a model up by name.

    Raises:
        ModelNotFoundError: for an unknown name, with close matches (never auto-corrected).
    """
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(
            f"Unknown model {name!r}.{hint} Run `edgecnn models` for the list."
        )
    return _REGISTRY[name]


def build_model(
    name: str,
    num_classes: int,
    *,
    input_size: tuple[int, int] | None = None,
    **kwargs: Any,
):
    """Build a registered model for ``num_classes`` at ``input_size`` (default: the model's)."""
    spec = get_model_spec(name)
    h, w = input_size or spec.input_size
    return spec.builder(num_classes, input_shape=(h, w, 3), **kwargs)
