"""`python -m tokensurgeon` runs the CLI."""

from .cli import app

app(prog_name="tokensurgeon")
