"""What every command shares: one-line errors, progress bars, printing results, option parsing."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bars

from ..errors import TokenSurgeonError
from ..runtime.progress import Progress

console = Console()
errors = Console(stderr=True)


def trust_remote_code_option() -> Any:
    """The one --trust-remote-code option every command that loads a model or tokenizer takes."""
    return typer.Option(False, "--trust-remote-code",
                        help="Let transformers run Python code shipped with the model or tokenizer (auto_map).")


@contextlib.contextmanager
def user_errors(ctx: typer.Context) -> Iterator[None]:
    """Turn a TokenSurgeonError into one line on stderr and exit code 2 (the traceback too with --debug)."""
    try:
        yield
    except TokenSurgeonError as exc:
        if ctx.find_root().params.get("debug"):
            traceback.print_exc(file=sys.stderr)
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[Progress | None]:
    """A rich progress callback (phase, done, total), or None when output is JSON or not a terminal."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Bars(*columns, console=Console(stderr=True), transient=True) as bars:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total)
            bars.update(tasks[phase], completed=done, total=total)

        yield update


def run_job(job: Callable[[Any, Any], Any], config: Any, *, as_json: bool, view: str) -> None:
    """Run ``job(config, progress)`` under progress bars (none for JSON or a pipe) and print its result."""
    with progress_bars(not as_json and sys.stderr.isatty()) as progress:
        result = job(config, progress)
    show(result, as_json=as_json, view=view)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def show(result: Any, *, as_json: bool, view: str, payload: Any = None) -> None:
    """Print a result as one JSON document for scripts, or through its rich view in render.py."""
    if as_json:
        print_json(result.to_dict() if payload is None else payload)
        return
    from . import render

    getattr(render, view)(console, result)


def read_texts(paths: list[Path]) -> dict[str, str]:
    """label -> text (evaluation.rows: unique labels, UTF-8 and non-empty checked)."""
    from ..evaluation.rows import read_text_file, text_labels

    return {label: read_text_file(path) for label, path in zip(text_labels(paths), paths)}


def method_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """METHOD.KEY=VALUE pairs, grouped by method."""
    grouped: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, dot, rest = pair.partition(".")
        if not dot or not name or "=" in name:
            raise TokenSurgeonError(f"--option expects METHOD.KEY=VALUE (e.g. omp.k=32), got {pair!r}")
        grouped.setdefault(name, {}).update(parse_options([rest]))
    return grouped


def parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TokenSurgeonError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise TokenSurgeonError(f"--option {key}={value}: not a finite number")
        options[key.replace("-", "_")] = parsed
    return options
