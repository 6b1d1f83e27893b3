"""The check command: will engines load this checkpoint, and does llama.cpp's converter take it?"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .common import console, print_json, user_errors


def check(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Checkpoint directory (a transplant's, heal's or export's output)."),
    llama_cpp: Optional[Path] = typer.Option(None, "--llama-cpp",
                                             help="llama.cpp checkout (or its convert_hf_to_gguf.py, or an unpacked "
                                                  "llama-cpp-python sdist): convert to GGUF with it and report."),
    draft_for: Optional[Path] = typer.Option(None, "--draft-for", help="Also check MODEL as a draft for this target."),
    gguf: Optional[Path] = typer.Option(None, "--gguf",
                                        help="Keep the converted GGUF here (default: a temporary file)."),
    outtype: str = typer.Option("f16", help="GGUF tensor type (the converter's --outtype)."),
    vocab_only: bool = typer.Option(False, "--vocab-only",
                                    help="Convert the vocabulary only (fast; the tokenizer's checks)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Static checks engines need (vocab_size vs embedding rows and token ids, special ids, a draft's vocabulary)
    and, with --llama-cpp, a GGUF conversion by llama.cpp's own converter. Exit code 1 when a check fails.

    Example: `tokensurgeon check ./smollm2-llama3 --llama-cpp ~/llama.cpp`
    """
    with user_errors(ctx):
        from ..deploy import check_deploy

        report = check_deploy(model, llama_cpp=llama_cpp, draft_for=draft_for, outfile=gguf, outtype=outtype,
                              vocab_only=vocab_only)
    show_deploy(report, as_json=as_json)
    if not report.ok:
        raise typer.Exit(code=1)


def show_deploy(report: Any, *, as_json: bool) -> None:
    """A deploy report (deploy.DeployReport) as JSON or as its plain lines."""
    from ..deploy import render_text

    if as_json:
        print_json(report.to_dict())
    else:
        console.print(render_text(report), end="", markup=False, highlight=False, soft_wrap=True)
