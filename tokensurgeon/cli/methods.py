"""The methods command: the registered initialisation methods and what each needs."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from .common import console


def methods() -> None:
    """List the initialisation methods and what each needs."""
    from ..methods import INIT_METHODS

    table = Table("method", "also needs", "what it does")
    for name, cls in sorted(INIT_METHODS.items()):
        table.add_row(name, escape(cls.needs()), escape(cls.summary))
    console.print(table)
