"""The command line: parse options, call one plain function, print its result. No logic here."""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .config import (DRAFT_METHOD, EvalConfig, ExportConfig, HealConfig, HypernetConfig, SpeculativeConfig,
                     TransplantConfig)
from .errors import TokenSurgeonError

app = typer.Typer(
    help="Tokenizer surgery for pretrained language models: give a model another tokenizer.\n\n"
         "Examples:\n\n"
         "  tokensurgeon inspect ./SmolLM2-135M ./llama3-tokenizer --text corpus.txt\n\n"
         "  tokensurgeon transplant ./SmolLM2-135M ./llama3-tokenizer -o ./smollm2-llama3 --eval-text corpus.txt",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
console = Console()
errors = Console(stderr=True)
STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        console.print(f"tokensurgeon {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    STATE["debug"] = debug


def _trust_remote_code() -> Any:
    """The one --trust-remote-code option every command that loads a model or tokenizer takes."""
    return typer.Option(False, "--trust-remote-code",
                        help="Let transformers run Python code shipped with the model or tokenizer (auto_map).")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a TokenSurgeonError into one line on stderr and exit code 2 (the traceback too with --debug)."""
    try:
        yield
    except TokenSurgeonError as exc:
        if STATE["debug"]:
            traceback.print_exc(file=sys.stderr)
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress callback (phase, done, total), or None when output is JSON or not a terminal."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bars:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total)
            bars.update(tasks[phase], completed=done, total=total)

        yield update


def _run_job(job: Callable[[Any, Any], Any], config: Any, *, as_json: bool, view: str) -> None:
    """Run ``job(config, progress)`` under progress bars (none for JSON or a pipe) and print its result."""
    with progress_bars(not as_json and sys.stderr.isatty()) as progress:
        result = job(config, progress)
    _show(result, as_json=as_json, view=view)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _show(result: Any, *, as_json: bool, view: str, payload: Any = None) -> None:
    """Print a result as one JSON document for scripts, or through its rich view in render.py."""
    if as_json:
        _print_json(result.to_dict() if payload is None else payload)
        return
    from . import render

    getattr(render, view)(console, result)


def _read_texts(paths: list[Path]) -> dict[str, str]:
    texts = {}
    for path in paths:
        if not path.is_file():
            raise TokenSurgeonError(f"text file {path} does not exist")
        texts[path.name] = path.read_text(encoding="utf-8", errors="replace")
    return texts


@app.command()
def inspect(
    base: Path = typer.Argument(..., help="Base model or tokenizer directory."),
    donor: Path = typer.Argument(..., help="Donor model or tokenizer directory."),
    text: Optional[List[Path]] = typer.Option(None, "--text", help="Text file to measure splits on (repeatable)."),
    samples: int = typer.Option(12, help="How many new tokens to show with their base decomposition."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    trust_remote_code: bool = _trust_remote_code(),
) -> None:
    """Show how the donor vocabulary overlaps the base vocabulary.

    Example: `tokensurgeon inspect ./SmolLM2-135M ./llama3 --text news.txt --json`
    """
    with user_errors():
        from .overlap import compare_tokenizers
        from .pair import load_pair

        texts = _read_texts(text or [])
        pair = load_pair(base, donor, trust_remote_code=trust_remote_code)
        report = compare_tokenizers(pair.alignment, pair.base_vocab, pair.donor_vocab, pair.base_tokenizer,
                                    pair.donor_tokenizer, paths=(str(base), str(donor)), texts=texts,
                                    n_samples=samples)
    _show(report, as_json=as_json, view="print_overlap")


@app.command()
def transplant(
    base: Path = typer.Argument(..., help="Base checkpoint directory (config.json, safetensors, tokenizer)."),
    donor: Optional[Path] = typer.Argument(None, help="Donor tokenizer directory, or a full donor model directory "
                                                      "(may be omitted with --as-draft-for)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory for the patched checkpoint."),
    method: Optional[str] = typer.Option(None, help=f"Initialisation method for new tokens (see `methods`) "
                                                    f"[default: {TransplantConfig.method}; {DRAFT_METHOD} with "
                                                    "--as-draft-for]."),
    option: Optional[List[str]] = typer.Option(None, "--option", help="Method option KEY=VALUE (repeatable)."),
    seed: int = typer.Option(TransplantConfig.seed, help="Random seed (methods that sample)."),
    device: str = typer.Option(TransplantConfig.device, help="auto, cpu or cuda."),
    chat_template: str = typer.Option(TransplantConfig.chat_template, help="Chat template to keep: donor or base."),
    pad_to_multiple: int = typer.Option(TransplantConfig.pad_to_multiple, help="Pad the embedding rows up to a multiple of this."),
    eval_text: Optional[List[Path]] = typer.Option(None, "--eval-text", help="Text for bits-per-byte before/after."),
    corpus: Optional[List[Path]] = typer.Option(None, "--corpus",
                                                help="Text a method learns from (focus, tokenadapt, hypernet; repeatable)."),
    eval_max_bytes: Optional[int] = typer.Option(None, help="Evaluate at most this many bytes of each text."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    trust_remote_code: bool = _trust_remote_code(),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Read pytorch_model*.bin weights (torch weights-only loader) when there are "
                                           "no safetensors; the output is safetensors."),
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite",
                                         help="Go on when base or donor embeddings hold NaN or inf."),
    hypernet: Optional[Path] = typer.Option(None, "--hypernet",
                                            help="With --method hypernet: a network from `hypernet train` "
                                                 "(default: train one now and cache it)."),
    as_draft_for: Optional[Path] = typer.Option(None, "--as-draft-for",
                                                help="Make BASE a speculative-decoding draft for this target model "
                                                     "(the donor): the target's exact row count, tokenizer, chat "
                                                     "template and special ids, verified before anything is written."),
) -> None:
    """Give BASE the DONOR's tokenizer and write a patched checkpoint plus a report.

    Example: `tokensurgeon transplant ./SmolLM2-135M ./llama3 -o out --eval-text news.txt`

    Draft model for speculative decoding: `tokensurgeon transplant ./SmolLM2-135M --as-draft-for ./gemma-3-270m -o draft`
    """
    with user_errors():
        from .transplant import transplant as run_transplant

        if donor is None and as_draft_for is None:
            raise TokenSurgeonError("missing DONOR: pass a donor tokenizer or model directory (or --as-draft-for TARGET)")
        config = TransplantConfig(base=base, donor=donor or as_draft_for, out=out,
                                  method=method or (DRAFT_METHOD if as_draft_for else TransplantConfig.method),
                                  method_options=_parse_options(option or [])
                                  | ({"hypernet": str(hypernet)} if hypernet else {}), seed=seed, device=device,
                                  chat_template=chat_template, pad_to_multiple=pad_to_multiple,
                                  eval_texts=tuple(eval_text or []), eval_max_bytes=eval_max_bytes, force=force,
                                  trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                                  allow_nonfinite=allow_nonfinite, corpus=tuple(corpus or []),
                                  draft_for=as_draft_for)
        _run_job(run_transplant, config, as_json=as_json, view="print_transplant")


@app.command()
def evaluate(
    models: List[Path] = typer.Argument(..., help="Checkpoint directories (each with its own tokenizer)."),
    text: List[Path] = typer.Option(..., "--text", help="Text file to score (repeatable)."),
    context: int = typer.Option(EvalConfig.context, help="Tokens per window, BOS included."),
    batch_size: int = typer.Option(EvalConfig.batch_size, help="Windows per forward pass."),
    max_bytes: Optional[int] = typer.Option(EvalConfig.max_bytes, help="Score only the first bytes of each text."),
    device: str = typer.Option(EvalConfig.device, help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    trust_remote_code: bool = _trust_remote_code(),
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
    with user_errors():
        from .evaluate import evaluate_models

        if speculative:
            from .speculative import speculative_benchmark

            if len(models) < 2:
                raise TokenSurgeonError("--speculative takes TARGET and at least one DRAFT")
            config = SpeculativeConfig(k=draft_tokens, prompts=prompts, prompt_tokens=prompt_tokens,
                                       max_new_tokens=new_tokens, max_bytes=max_bytes, device=device)
            with progress_bars(not as_json and sys.stderr.isatty()) as progress:
                report = speculative_benchmark(models[0], models[1:], _read_texts(text), config, progress=progress,
                                               trust_remote_code=trust_remote_code)
            _show(report, as_json=as_json, view="print_speculative")
            return
        config = EvalConfig(context=context, batch_size=batch_size, max_bytes=max_bytes, device=device)
        texts = _read_texts(text)
        with progress_bars(not as_json and sys.stderr.isatty()) as progress:
            results = evaluate_models(models, texts, device=config.device, context=config.context,
                                      stride=config.stride, batch_size=config.batch_size,
                                      max_bytes=config.max_bytes, progress=progress,
                                      trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    _show(results, as_json=as_json, view="print_scores", payload=[result.to_dict() for result in results])


@app.command()
def export(
    source: Path = typer.Argument(..., help="Checkpoint to export (a transplant's output), or a patch (--apply-to)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory."),
    dtype: Optional[str] = typer.Option(ExportConfig.dtype, help="bf16, fp16 or fp32 for floating tensors (default keep)."),
    max_shard_size: str = typer.Option(ExportConfig.max_shard_size, help="Largest shard, e.g. 5GB, 500MB, 2GiB."),
    embeddings_only: bool = typer.Option(ExportConfig.embeddings_only, "--embeddings-only",
                                         help="Write a small patch: changed embeddings, tokenizer, config, manifest."),
    apply_to: Optional[Path] = typer.Option(ExportConfig.apply_to, "--apply-to",
                                            help="Rebuild a full checkpoint from the patch SOURCE on this base."),
    link: bool = typer.Option(ExportConfig.link, "--link", help="Hard-link unchanged shards instead of copying."),
    force: bool = typer.Option(ExportConfig.force, "--force", help="Replace a non-empty output directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Re-write a checkpoint (dtype, shard size), cut an embeddings-only patch, or apply one to its base.

    Example: `tokensurgeon export ./smollm2-llama3 -o ./smollm2-llama3-bf16 --dtype bf16 --max-shard-size 100MB`
    """
    with user_errors():
        from .export import export as run_export

        config = ExportConfig(source=source, out=out, dtype=dtype, max_shard_size=max_shard_size,
                              embeddings_only=embeddings_only, apply_to=apply_to, link=link, force=force)
        _run_job(run_export, config, as_json=as_json, view="print_export")


@app.command()
def heal(
    patched: Path = typer.Argument(..., help="Patched checkpoint (a transplant's output) to heal."),
    text: Optional[List[Path]] = typer.Option(None, "--text", help="Text to train on (repeatable); its end is held out."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory for the healed checkpoint."),
    rows: str = typer.Option(HealConfig.rows, help="new: only the rows the transplant computed; all: every row."),
    steps: int = typer.Option(HealConfig.steps, help="Training steps at most."),
    lr: float = typer.Option(HealConfig.lr, help="AdamW learning rate."),
    anchor_weight: float = typer.Option(HealConfig.anchor_weight,
                                        help="With --rows all: L2 pull of copied rows back to their start."),
    batch_size: int = typer.Option(HealConfig.batch_size, help="Sequences per step."),
    context: int = typer.Option(HealConfig.context, help="Tokens per training sequence, BOS included."),
    held_out: float = typer.Option(HealConfig.held_out, help="Fraction of each text (its end) held out."),
    eval_every: int = typer.Option(HealConfig.eval_every, help="Steps between held-out evaluations."),
    patience: int = typer.Option(HealConfig.patience, help="Stop after this many evaluations without improvement."),
    eval_max_bytes: Optional[int] = typer.Option(HealConfig.eval_max_bytes,
                                                 help="Score at most this many bytes of each held-out part."),
    compare_base: bool = typer.Option(HealConfig.compare_base, "--compare-base/--no-compare-base",
                                      help="Also score the transplant's base model on the held-out text."),
    seed: int = typer.Option(HealConfig.seed, help="Random seed (data order)."),
    device: str = typer.Option(HealConfig.device, help="auto, cpu or cuda."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    trust_remote_code: bool = _trust_remote_code(),
) -> None:
    """Fine-tune only the embedding rows of PATCHED on text; keep the best held-out state, never a worse one.

    Example: `tokensurgeon heal ./smollm2-llama3 --text news.txt --text udhr/ukr.txt -o ./smollm2-llama3-healed`
    """
    with user_errors():
        from .heal import heal as run_heal

        config = HealConfig(patched=patched, texts=tuple(text or []), out=out, rows=rows, steps=steps, lr=lr,
                            anchor_weight=anchor_weight, batch_size=batch_size, context=context, held_out=held_out,
                            eval_every=eval_every, patience=patience, eval_max_bytes=eval_max_bytes,
                            compare_base=compare_base, seed=seed, device=device, force=force,
                            trust_remote_code=trust_remote_code)
        _run_job(run_heal, config, as_json=as_json, view="print_heal")


@app.command()
def compare(
    base: Path = typer.Argument(..., help="Base checkpoint directory."),
    donor: Path = typer.Argument(..., help="Donor tokenizer directory, or a full donor model directory."),
    text: List[Path] = typer.Option(..., "--text", help="Text file to score every method on (repeatable)."),
    methods: Optional[str] = typer.Option(None, "--methods",
                                          help="Comma-separated methods to run [default: every registered method, "
                                               "zero included as the floor]."),
    option: Optional[List[str]] = typer.Option(None, "--option", help="Method option METHOD.KEY=VALUE (repeatable), "
                                                                      "e.g. omp.k=32."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Keep the best model (and its report) here."),
    max_bytes: Optional[int] = typer.Option(None, help="Score only the first bytes of each text."),
    corpus: Optional[List[Path]] = typer.Option(None, "--corpus",
                                                help="Text the corpus methods learn from (repeatable)."),
    seed: int = typer.Option(TransplantConfig.seed, help="Random seed (methods that sample)."),
    device: str = typer.Option(TransplantConfig.device, help="auto, cpu or cuda."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    trust_remote_code: bool = _trust_remote_code(),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Read pytorch_model*.bin weights (weights-only) when there are no safetensors."),
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite",
                                         help="Go on when base or donor embeddings hold NaN or inf."),
) -> None:
    """Run every applicable initialisation method on BASE <- DONOR and rank them by bits per byte.

    Methods whose inputs are missing (omp with a tokenizer-only donor) are listed as skipped with the reason.
    Ranking: geometric mean over texts of patched / base bits per byte.

    Example: `tokensurgeon compare ./gemma-3-270m ./SmolLM2-135M --text news.txt --text udhr/spa.txt --max-bytes 4000 -o best`
    """
    with user_errors():
        from .compare import compare as run_compare
        from .config import CompareConfig

        config = CompareConfig(base=base, donor=donor, texts=tuple(text), out=out, max_bytes=max_bytes,
                               methods=tuple(m.strip() for m in (methods or "").split(",") if m.strip()),
                               method_options=_method_options(option or []), seed=seed, device=device,
                               corpus=tuple(corpus or []), force=force, trust_remote_code=trust_remote_code,
                               allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite)
        _run_job(run_compare, config, as_json=as_json, view="print_compare")


def _method_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """METHOD.KEY=VALUE pairs, grouped by method."""
    grouped: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, dot, rest = pair.partition(".")
        if not dot or not name or "=" in name:
            raise TokenSurgeonError(f"--option expects METHOD.KEY=VALUE (e.g. omp.k=32), got {pair!r}")
        grouped.setdefault(name, {}).update(_parse_options([rest]))
    return grouped


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TokenSurgeonError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


hypernet_app = typer.Typer(help="The hypernetwork of `transplant --method hypernet` (Zero-Shot Tokenizer Transfer).",
                           no_args_is_help=True)
app.add_typer(hypernet_app, name="hypernet")


@hypernet_app.command("train")
def hypernet_train(
    base: Path = typer.Argument(..., help="Base checkpoint directory the network embeds tokens for."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory (hypernet.safetensors + hypernet.json)."),
    corpus: Optional[List[Path]] = typer.Option(None, "--corpus", help="Text for the LM stage (repeatable)."),
    steps: int = typer.Option(HypernetConfig.steps, help="Warm-up steps (on the base vocabulary)."),
    lm_steps: int = typer.Option(HypernetConfig.lm_steps, help="LM-stage steps on --corpus, base model frozen."),
    width: Optional[int] = typer.Option(HypernetConfig.width,
                                        help="Transformer width [default: hidden size on CUDA, 128 on CPU]."),
    seed: int = typer.Option(HypernetConfig.seed, help="Random seed."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the training record as JSON."),
    trust_remote_code: bool = _trust_remote_code(),
) -> None:
    """Train a hypernetwork for BASE once; reuse it for any donor with `transplant --hypernet OUT`.

    Example: `tokensurgeon hypernet train ./SmolLM2-135M -o ./smollm2-hn --corpus news.txt --lm-steps 100`
    """
    with user_errors():
        from .hypernet import train_to_directory

        config = HypernetConfig(steps=steps, lm_steps=lm_steps, width=width, seed=seed)
        with progress_bars(not as_json and sys.stderr.isatty()) as progress:
            record = train_to_directory(base, out, config, corpus=tuple(corpus or []), device=device, force=force,
                                        trust_remote_code=trust_remote_code, progress=progress)
    _show(record, as_json=as_json, view="print_hypernet", payload=record)


@app.command()
def methods() -> None:
    """List the initialisation methods and what each needs."""
    from .methods import INIT_METHODS

    table = Table("method", "needs donor model", "what it does")
    for name, cls in sorted(INIT_METHODS.items()):
        table.add_row(name, "yes" if cls.needs_donor_embeddings else "no", escape(cls.summary))
    console.print(table)
