"""The evaluate command: bits per byte, task retention with --task, or speculative decoding with --speculative."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..config import EvalConfig, SpeculativeConfig
from ..errors import TokenSurgeonError
from .common import FILES, progress_bars, read_texts, show, trust_remote_code_option, user_errors


def evaluate(
    ctx: typer.Context,
    models: List[Path] = typer.Argument(..., help="Checkpoint directories (each with its own tokenizer)."),
    text: Optional[List[Path]] = typer.Option(None, "--text", help=f"Text to score: {FILES}."),
    task: Optional[str] = typer.Option(None, "--task",
                                       help="Task retention instead of bits per byte: arithmetic (generated problems, "
                                            "exact match per operand length) or FILE.jsonl (multiple choice, "
                                            "lm-eval-harness convention: context, choices, gold)."),
    task_items: Optional[int] = typer.Option(None, "--task-items",
                                             help="With --task: arithmetic problems per operation and length "
                                                  "[default: 20], or the first items of FILE.jsonl [default: all]."),
    context: int = typer.Option(EvalConfig.context, help="Tokens per window, BOS included."),
    batch_size: int = typer.Option(EvalConfig.batch_size, help="Windows per forward pass."),
    max_bytes: Optional[int] = typer.Option(EvalConfig.max_bytes, help="Score only the first bytes of each text."),
    device: str = typer.Option(EvalConfig.device, help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    trust_remote_code: bool = trust_remote_code_option(),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Load pytorch_model*.bin weights (weights-only) when there are no safetensors."),
    speculative: bool = typer.Option(False, "--speculative",
                                     help="Speculative decoding instead: MODELS are TARGET DRAFT...; acceptance rate "
                                          "and tokens/s of greedy assisted generation with each draft."),
    draft_tokens: int = typer.Option(SpeculativeConfig.k, "-k", "--draft-tokens",
                                     help="With --speculative: tokens the draft proposes per round."),
    prompts: int = typer.Option(SpeculativeConfig.prompts, help="With --speculative: prompts cut from the texts."),
    prompt_tokens: int = typer.Option(SpeculativeConfig.prompt_tokens,
                                      help="With --speculative: target tokens per prompt."),
    new_tokens: int = typer.Option(SpeculativeConfig.max_new_tokens,
                                   help="With --speculative: tokens generated per prompt."),
) -> None:
    """Bits per byte (and bytes per token) of each model on each text; tokenizer-independent.

    Example: `tokensurgeon evaluate ./SmolLM2-135M ./smollm2-llama3 --text news.txt --text udhr/spa.txt`

    Speculative decoding (draft acceptance, tokens/s with and without it; a draft with another vocabulary goes
    through universal assisted generation): `tokensurgeon evaluate --speculative ./gemma-3-270m ./draft ./SmolLM2-135M --text news.txt`
    """
    with user_errors(ctx):
        from ..evaluation import evaluate_models

        if task is not None:
            _run_task(models, task, task_items, device=device, as_json=as_json, trust_remote_code=trust_remote_code,
                      allow_pickle=allow_pickle)
            return
        if not text:
            raise TokenSurgeonError("evaluate needs --text FILE (bits per byte) or --task arithmetic|FILE.jsonl")

        if speculative:
            from ..evaluation.speculative import speculative_benchmark

            if len(models) < 2:
                raise TokenSurgeonError("--speculative takes TARGET and at least one DRAFT")
            config = SpeculativeConfig(k=draft_tokens, prompts=prompts, prompt_tokens=prompt_tokens,
                                       max_new_tokens=new_tokens, max_bytes=max_bytes, device=device)
            with progress_bars(not as_json and sys.stderr.isatty()) as progress:
                report = speculative_benchmark(models[0], models[1:], read_texts(text), config, progress=progress,
                                               trust_remote_code=trust_remote_code)
            show(report, as_json=as_json, view="print_speculative")
            return
        config = EvalConfig(context=context, batch_size=batch_size, max_bytes=max_bytes, device=device)
        texts = read_texts(text)
        with progress_bars(not as_json and sys.stderr.isatty()) as progress:
            results = evaluate_models(models, texts, device=config.device, context=config.context,
                                      stride=config.stride, batch_size=config.batch_size,
                                      max_bytes=config.max_bytes, progress=progress,
                                      trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    show(results, as_json=as_json, view="print_scores", payload=[result.to_dict() for result in results])


def _run_task(models: list[Path], task: str, items: Optional[int], *, device: str, as_json: bool,
              trust_remote_code: bool, allow_pickle: bool) -> None:
    from ..evaluation.tasks import get_task, run_task

    options = {} if items is None else {"per_group" if task == "arithmetic" else "limit": items}
    chosen = get_task(task, **options)
    with progress_bars(not as_json and sys.stderr.isatty()) as progress:
        results = run_task(models, chosen, device=device, trust_remote_code=trust_remote_code,
                           allow_pickle=allow_pickle, progress=progress)
    show(results, as_json=as_json, view="print_tasks",
         payload={"task": chosen.describe(), "results": [result.to_dict() for result in results]})
