"""The command line: each command parses its options, calls one plain function and prints its result
(render.py); typer and rich are imported here and nowhere below."""

from .app import new_app
from .common import Command
from .deploy import check
from .evaluate import evaluate
from .jobs import compare, export, heal, hypernet_app
from .methods import methods
from .surgery import inspect, transplant

app = new_app()
for command in (inspect, transplant, evaluate, export, heal, compare, check):  # the order of `tokensurgeon --help`
    app.command(cls=Command)(command)
app.add_typer(hypernet_app, name="hypernet")
app.command(cls=Command)(methods)

__all__ = ["app"]
