"""Where tokensurgeon keeps what it can rebuild (fastText vectors, hypernetworks, test models, model layouts,
rendered chat turns): ``$TOKENSURGEON_CACHE`` or ``~/.cache/tokensurgeon``, one folder per kind."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable

from ..errors import TokenSurgeonError
from .outdir import atomic_directory
from .progress import first_line


def cache_root() -> Path:
    """``$TOKENSURGEON_CACHE``, or ``~/.cache/tokensurgeon`` when it is unset."""
    root = os.environ.get("TOKENSURGEON_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "tokensurgeon"


def cache_dir(kind: str) -> Path:
    """The folder of one kind of cached artefact ("aux", "hypernet", "models", "layouts", "chat")."""
    return cache_root() / kind


def store(target: Path, write: Callable[[Path], None]) -> str | None:
    """Write a cache entry atomically with ``write(staging)``; a failure costs a rebuild next time, so it
    is returned as a warning for the report rather than raised (None when the entry was written)."""
    try:
        with atomic_directory(target) as staging:
            write(staging)
    except (OSError, TokenSurgeonError) as exc:
        return f"could not cache {target} ({first_line(exc)}); the next run rebuilds it"
    return None


def transformers_version() -> str:
    """transformers' version, part of the key of every entry its code decides (layouts, rendered chat turns):
    read from its installed metadata (no import: ~0.5 s) where that describes the module an import would load."""
    if "transformers" not in sys.modules:
        spec = importlib.util.find_spec("transformers")
        try:
            installed = importlib.metadata.distribution("transformers")
        except importlib.metadata.PackageNotFoundError:  # on sys.path without metadata (a source tree)
            installed = None
        if installed is not None and spec is not None and spec.origin is not None and (
                Path(spec.origin).resolve() == Path(installed.locate_file("transformers/__init__.py")).resolve()):
            return installed.version
    import transformers

    return transformers.__version__
