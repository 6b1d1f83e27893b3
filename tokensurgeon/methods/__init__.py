"""Registry of initialisation methods: every module in this package that defines a class with a
``name`` and an ``initialise`` is a method, so a new method is one new file and nothing else."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from ..config import DEFAULT_METHOD
from ..errors import MethodError
from .base import InitContext, InitMethod, InitResult, Provenance


def _discover() -> dict[str, type]:
    found: dict[str, type] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name == "base" or module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and isinstance(getattr(cls, "name", None), str) \
                    and callable(getattr(cls, "initialise", None)):
                found[cls.name] = cls
    return found


INIT_METHODS: dict[str, type] = _discover()

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
