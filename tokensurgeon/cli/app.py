"""The Typer application and its global options; each command lives in the module of its group and
is registered in ``cli/__init__.py``."""

from __future__ import annotations

import typer

from .. import __version__
from .common import Group, console

HELP = ("Tokenizer surgery for pretrained language models: give a model another tokenizer.\n\n"
        "Examples:\n\n"
        "  tokensurgeon inspect ./SmolLM2-135M ./llama3-tokenizer --text corpus.txt\n\n"
        "  tokensurgeon transplant ./SmolLM2-135M ./llama3-tokenizer -o ./smollm2-llama3 --eval-text corpus.txt")


def _version(value: bool) -> None:
    if value:
        console.print(f"tokensurgeon {__version__}")
        raise typer.Exit()


def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    # no docstring: it would replace the app's help; --debug is read where an error is reported
    # (common.user_errors, from the command's context), so nothing is stored here
    del version, debug


def new_app() -> typer.Typer:
    """A fresh application with the global options: typer's docs generator re-runs cli/__init__.py and
    must get an app object of its own, so none is shared at module level."""
    app = typer.Typer(cls=Group, help=HELP, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="markdown")
    app.callback()(main)
    return app
