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


# a declared option type -> (is this value of it, what to say when not); annotations are strings here
_KINDS = {"int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "not an integer"),
          "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "not a number"),
          "bool": (lambda v: isinstance(v, bool), "not true or false")}


def _wrong_kind(annotation: Any, value: Any) -> str | None:
    """What is wrong with an option value given its declared type (int, float, bool); None when it fits
    or the type says nothing checkable. Python's own errors for such values name no option."""
    check = _KINDS.get(annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""))
    return None if check is None or check[0](value) else check[1]


def get_init_method(name: str, **options: Any) -> InitMethod:
    """Build a method by name; unknown names and options raise MethodError listing the valid ones."""
    if name not in INIT_METHODS:
        raise MethodError(f"unknown method {name!r}; choose one of: {', '.join(list_init_methods())}")
    init = INIT_METHODS[name].__init__
    accepted = {} if init is object.__init__ else inspect.signature(init).parameters  # object's takes *args, **kw
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [key for key in options if key not in accepted and not takes_any]
    if unknown:
        valid = [key for key in accepted if key != "self" and accepted[key].kind is not inspect.Parameter.VAR_KEYWORD]
        raise MethodError(f"method {name!r} does not take option {unknown[0]!r}"
                          f"{'; it takes: ' + ', '.join(valid) if valid else ' (it takes none)'}")
    for key, value in options.items():
        wrong = _wrong_kind(accepted[key].annotation, value) if key in accepted else None
        if wrong:
            raise MethodError(f"method {name!r}: option {key}={value!r} is {wrong}")
    try:
        return INIT_METHODS[name](**options)
    except (TypeError, ValueError) as exc:  # the option is known, its value is not usable
        shown = ", ".join(f"{key}={value!r}" for key, value in options.items())
        raise MethodError(f"method {name!r}: invalid option value ({shown}): {exc}") from exc
