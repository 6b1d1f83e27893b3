"""Registry of initialisation methods: one file per method, one line here per file."""

from __future__ import annotations

from typing import Any

from ..config import DEFAULT_METHOD
from ..errors import MethodError
from .base import InitContext, InitMethod, InitResult, Provenance
from .hewitt import HewittMethod
from .mean import MeanMethod
from .omp import OMPMethod
from .subword_mean import SubwordMeanMethod
from .zero import ZeroMethod

INIT_METHODS: dict[str, type] = {
    cls.name: cls for cls in (SubwordMeanMethod, OMPMethod, MeanMethod, HewittMethod, ZeroMethod)
}

__all__ = ["INIT_METHODS", "DEFAULT_METHOD", "InitContext", "InitMethod", "InitResult", "Provenance",
           "get_init_method", "list_init_methods"]


def list_init_methods() -> list[str]:
    return sorted(INIT_METHODS)


def get_init_method(name: str, **options: Any) -> InitMethod:
    """Build a method by name; unknown names and options raise MethodError listing the valid ones."""
    if name not in INIT_METHODS:
        raise MethodError(f"unknown method {name!r}; choose one of: {', '.join(list_init_methods())}")
    try:
        return INIT_METHODS[name](**options)
    except TypeError as exc:
        raise MethodError(f"method {name!r} does not take these options {sorted(options)}: {exc}") from exc
