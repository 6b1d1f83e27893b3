"""Atomic output directories, under the checkpoint package's name: the implementation lives in
``runtime/outdir.py`` because method caches (below this package) write atomically too."""

from ..runtime.outdir import atomic_directory, check_output_path, clean_leftovers

__all__ = ["atomic_directory", "check_output_path", "clean_leftovers"]
