"""What every command shares: one-line errors, progress bars, printing results, option parsing."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bars
from typer.core import TyperCommand, TyperGroup

from ..errors import TokenSurgeonError
from ..runtime.progress import Progress

console = Console()
errors = Console(stderr=True)
PHASE_LINE_AFTER_S = 5.0  # without a terminal, a phase that runs this long gets a line on stderr (phase_lines)
PHASE_LINE_EVERY_S = 60.0  # ...and another one each time this much more has passed
SEVERAL_VALUES = ("--text", "--eval-text", "--corpus")  # options that take every file after them (shell globs)
FILES = "one or more files after the flag (a shell glob), a folder (its .txt and .md files) or a quoted glob; repeatable"


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


def phase_lines(stream: Any = None, *, after: float | None = None, every: float | None = None) -> Progress:
    """A progress callback for logs and pipes, where bars cannot draw: a stderr line for each phase once it
    has run ``after`` seconds (PHASE_LINE_AFTER_S), then one each ``every`` seconds (PHASE_LINE_EVERY_S), so
    long steps say what they do and how far they are, and quick ones stay quiet."""
    wait = PHASE_LINE_AFTER_S if after is None else after
    interval = PHASE_LINE_EVERY_S if every is None else every
    started: dict[str, float] = {}
    said: dict[str, float] = {}
    last_report = [time.monotonic()]  # a phase began about when the one before it last reported

    def update(phase: str, done: int, total: int, note: str = "") -> None:
        now = time.monotonic()
        start = started.setdefault(phase, last_report[0])
        last_report[0] = now
        if now - start >= wait and (phase not in said or now - said[phase] >= interval):
            said[phase] = now
            print(f"tokensurgeon: {phase}: {done:,}/{total:,} after {now - start:.0f} s" + (f", {note}" if note else ""),
                  file=stream or sys.stderr, flush=True)

    return update


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[Progress]:
    """A rich progress callback (phase, done, total); phase lines on stderr when output is JSON or not a terminal."""
    if not enabled:
        yield phase_lines()
        return
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[note]}"))
    with Bars(*columns, console=Console(stderr=True), transient=True) as bars:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int, note: str = "") -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total, note="")
            bars.update(tasks[phase], completed=done, total=total, note=note)

        yield update


def run_job(job: Callable[[Any, Any], Any], config: Any, *, as_json: bool, view: str) -> None:
    """Run ``job(config, progress)`` under progress bars (phase lines for JSON or a pipe) and print its result."""
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


def spread_values(args: list[str]) -> list[str]:
    """``--text a b c`` -> ``--text a --text b --text c`` for the options in SEVERAL_VALUES, so that a shell glob
    (``--corpus data/*.txt``) works after one flag; click takes one value per flag. Files after the first value
    join it; the first folder, option, missing path or ``--`` ends the list, so BASE and DONOR (folders) may follow."""
    spread: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        spread.append(arg)
        index += 1
        if arg == "--":
            return spread + args[index:]
        name = arg.partition("=")[0]
        if name not in SEVERAL_VALUES:
            continue
        if "=" not in arg and index < len(args):
            spread.append(args[index])
            index += 1
        while index < len(args) and not args[index].startswith("-") and Path(args[index]).is_file():
            spread += [name, args[index]]
            index += 1
    return spread


_PLACEHOLDERS = {"Path": "PATH", "int": "INTEGER", "float": "FLOAT", "str": "TEXT"}
_CLICK_TYPES = {"path": "Path", "integer": "int", "float": "float", "text": "str"}


def _element_type(param: Any) -> str:
    """A parameter's element type by Python name: typer's own description where it has one (bare_type, typer
    0.2x's rewrite), else click's type name (older typer keeps click's params; the GPU machine's does)."""
    if hasattr(param, "bare_type"):
        return param.bare_type().removeprefix("list[").removesuffix("]")
    return _CLICK_TYPES.get(getattr(getattr(param, "type", None), "name", ""), "")


def plain_metavars(params: list[Any]) -> None:
    """click's own placeholders in --help (PATH, INTEGER; FILE... for SEVERAL_VALUES; none for a flag) instead of
    typer's Python types (<list[Path]>, <bool>); arguments by their upper-case names (BASE, DONOR)."""
    for param in params:
        if param.metavar is not None:
            continue
        placeholder = _PLACEHOLDERS.get(_element_type(param), "VALUE")
        if param.param_type_name == "argument":
            param.metavar = param.name.upper()
            # typer's type column ignores an argument's metavar; this instance shows the placeholder instead
            param.display_type_rich = lambda ctx, shown=placeholder + ("..." if param.nargs != 1 else ""): shown
        elif param.is_flag:
            param.metavar = ""
        else:
            param.metavar = "FILE..." if set(param.opts) & set(SEVERAL_VALUES) else placeholder


class Command(TyperCommand):
    """Every tokensurgeon command: SEVERAL_VALUES options take several files after one flag (spread_values), and
    --help and the usage line read as users expect (``BASE DONOR``, PATH, no Python types)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        plain_metavars(params)
        return params

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_values(list(args)))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class Group(TyperGroup):
    """The app and its command groups: flags in --help without typer's <bool> (plain_metavars)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        plain_metavars(params)
        return params


def text_paths(paths: list[Path] | None) -> tuple[Path, ...]:
    """The files behind --text/--eval-text/--corpus values: folders and quoted globs expanded (evaluation.rows)."""
    from ..evaluation.rows import expand_text_paths

    return expand_text_paths(paths or [])


def read_texts(paths: list[Path] | None) -> dict[str, str]:
    """label -> text of the files behind the values (evaluation.rows: unique labels, UTF-8 and non-empty checked)."""
    from ..evaluation.rows import read_text_file, text_labels

    files = text_paths(paths)
    return {label: read_text_file(path) for label, path in zip(text_labels(files), files)}


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
