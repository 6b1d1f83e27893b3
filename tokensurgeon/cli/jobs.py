"""Commands that run a job on checkpoints: export, heal, compare, hypernet train."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..config import (CPU_BATCH_SIZE, DEFAULT_HEAL_OBJECTIVE, DEFAULT_HEAL_TRAIN, MAX_AUTO_BATCH, ExportConfig,
                      HealConfig, HypernetConfig, TransplantConfig)
from .common import (FILES, Command, Group, method_options, print_json, progress_bars, run_job, show, text_paths,
                     trust_remote_code_option, user_errors)
from .deploy import show_deploy


def export(
    ctx: typer.Context,
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
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (with --check-deploy one document: "
                                                       "export and deploy)."),
    check_deploy: Optional[Path] = typer.Option(None, "--check-deploy",
                                                help="Then run `check` on OUT with this llama.cpp checkout (GGUF "
                                                     "conversion and the engines' static checks)."),
) -> None:
    """Re-write a checkpoint (dtype, shard size), cut an embeddings-only patch, or apply one to its base.

    Example: `tokensurgeon export ./smollm2-llama3 -o ./smollm2-llama3-bf16 --dtype bf16 --max-shard-size 100MB`
    """
    with user_errors(ctx):
        from ..jobs.export import export as run_export

        config = ExportConfig(source=source, out=out, dtype=dtype, max_shard_size=max_shard_size,
                              embeddings_only=embeddings_only, apply_to=apply_to, link=link, force=force)
        if check_deploy is None:
            run_job(run_export, config, as_json=as_json, view="print_export")
            return
        from ..deploy import check_deploy as run_check, find_converter

        find_converter(check_deploy)  # a wrong --check-deploy fails now, not after the export
        with progress_bars(not as_json and sys.stderr.isatty()) as progress:
            result = run_export(config, progress)
        report = run_check(out, llama_cpp=check_deploy)
    if as_json:  # one JSON document for scripts
        print_json({"export": result.to_dict(), "deploy": report.to_dict()})
    else:
        show(result, as_json=False, view="print_export")
        show_deploy(report, as_json=False)
    if not report.ok:
        raise typer.Exit(code=1)


def heal(
    ctx: typer.Context,
    patched: Path = typer.Argument(..., help="Patched checkpoint (a transplant's output, or a draft) to heal."),
    text: Optional[List[Path]] = typer.Option(None, "--text", help=f"Text to train on, its end held out: {FILES}."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory for the healed checkpoint."),
    objective: Optional[str] = typer.Option(None, help="lm: next-token loss on the text; distill: match the teacher "
                                                       f"(ALM chunks; token KL for a draft) [default: "
                                                       f"{DEFAULT_HEAL_OBJECTIVE}]."),
    lm_mix: float = typer.Option(HealConfig.lm_mix, help="With --objective distill: weight of the LM loss added."),
    kl_mix: float = typer.Option(HealConfig.kl_mix, help="With --objective distill across two tokenizers: weight of "
                                                         "the next-token KL over the tokens both share, where both "
                                                         "start a token at the same byte."),
    hidden_mix: float = typer.Option(HealConfig.hidden_mix, help="With --objective distill across two tokenizers: "
                                                                 "weight of the distance between the two models' "
                                                                 "last hidden states at those same positions."),
    train: Optional[str] = typer.Option(None, help="rows: the rows the transplant computed; embeddings: every row "
                                                   f"(others anchored); lora: embeddings + LoRA, merged; all: every "
                                                   f"weight (the teacher as a second copy) [default: "
                                                   f"{DEFAULT_HEAL_TRAIN}]."),
    teacher: Optional[Path] = typer.Option(HealConfig.teacher, help="Distillation teacher [default: the base in "
                                                                    "PATCHED/report.json]; a draft's target."),
    eval_text: Optional[List[Path]] = typer.Option(None, "--eval-text",
                                                   help=f"Unseen held-out text, never trained on, scored before "
                                                        f"and after: {FILES}."),
    guard_task: Optional[List[str]] = typer.Option(None, "--guard-task",
                                                   help="A task (arithmetic, a multiple-choice .jsonl, or "
                                                        "retention: agreement with the teacher's continuations of "
                                                        "held-out prompts, held per text) no kept state may score "
                                                        "lower on than PATCHED (repeatable); none: no task "
                                                        "[default: retention when there is a teacher]."),
    guard_text: Optional[List[Path]] = typer.Option(None, "--guard-text",
                                                    help=f"Text the retention guard cuts its prompts from, instead of "
                                                         f"the held-out split: the kind of text whose behaviour must "
                                                         f"not change; never a --text: {FILES}."),
    generate: int = typer.Option(HealConfig.generate, help="Train on this many greedy continuations the teacher "
                                                           "writes from prompts cut from the text, not on the text "
                                                           "itself (drafts: what speculative decoding must match)."),
    steps: int = typer.Option(HealConfig.steps, help="Training steps at most."),
    max_minutes: Optional[float] = typer.Option(HealConfig.max_minutes, help="Training time budget in minutes."),
    lr: float = typer.Option(HealConfig.lr, help="AdamW learning rate of the embeddings."),
    lora_lr: float = typer.Option(HealConfig.lora_lr, help="AdamW learning rate of the LoRA adapters."),
    lora_rank: int = typer.Option(HealConfig.lora_rank, help="LoRA rank (--train lora)."),
    body_lr: float = typer.Option(HealConfig.body_lr, help="AdamW learning rate of the transformer weights "
                                                           "(--train all)."),
    save_adapter: bool = typer.Option(HealConfig.save_adapter, "--save-adapter",
                                      help="Also write the PEFT adapter (LoRA + embeddings) to OUT/adapter."),
    temperature: float = typer.Option(HealConfig.temperature, help="ALM temperature (--objective distill)."),
    anchor_weight: float = typer.Option(HealConfig.anchor_weight,
                                        help="With --train embeddings|lora: L2 pull of copied rows to their start."),
    batch_rows: bool = typer.Option(HealConfig.batch_rows, "--batch-rows/--all-rows",
                                    help="Move only the rows of tokens in each step's batch (docs/heal.md)."),
    batch_size: Optional[int] = typer.Option(
        HealConfig.batch_size, show_default=False,
        help=f"Sequences per step [default: {CPU_BATCH_SIZE} on CPU; on CUDA as many as free memory holds, at most "
             f"{MAX_AUTO_BATCH}, measured by two probe steps]."),
    context: int = typer.Option(HealConfig.context, help="Tokens per training sequence, BOS included."),
    held_out: float = typer.Option(HealConfig.held_out, help="Fraction of each text (its end) held out."),
    eval_every: int = typer.Option(HealConfig.eval_every, help="Steps between held-out evaluations."),
    patience: int = typer.Option(HealConfig.patience, help="Stop after this many evaluations without improvement."),
    eval_max_bytes: Optional[int] = typer.Option(HealConfig.eval_max_bytes,
                                                 help="Score at most this many bytes of each held-out text."),
    gradient_checkpointing: bool = typer.Option(HealConfig.gradient_checkpointing, "--gradient-checkpointing",
                                                help="Trade compute for activation memory."),
    compare_base: bool = typer.Option(HealConfig.compare_base, "--compare-base/--no-compare-base",
                                      help="Also score the transplant's base model on the held-out text."),
    rows: Optional[str] = typer.Option(HealConfig.rows, hidden=True,
                                       help="Deprecated: new|all = --objective lm --train rows|embeddings."),
    seed: int = typer.Option(HealConfig.seed, help="Random seed (data order)."),
    device: str = typer.Option(HealConfig.device, help="auto, cpu or cuda."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    trust_remote_code: bool = trust_remote_code_option(),
) -> None:
    """Recovery training of PATCHED (LM or distillation; rows, embeddings, LoRA or all); keep the best held-out state.

    Example: `tokensurgeon heal ./smollm2-llama3 --text news.txt --eval-text udhr/ukr.txt -o ./smollm2-llama3-healed`
    """
    with user_errors(ctx):
        from ..jobs.heal import heal as run_heal

        config = HealConfig(patched=patched, texts=text_paths(text), out=out, objective=objective, lm_mix=lm_mix,
                            kl_mix=kl_mix, hidden_mix=hidden_mix, temperature=temperature, train=train, rows=rows,
                            teacher=teacher,
                            eval_texts=text_paths(eval_text), guard_tasks=tuple(guard_task) if guard_task else None,
                            guard_texts=text_paths(guard_text),
                            steps=steps,
                            generate=generate, lr=lr, lora_lr=lora_lr, body_lr=body_lr,
                            lora_rank=lora_rank, anchor_weight=anchor_weight, batch_rows=batch_rows, batch_size=batch_size,
                            context=context,
                            held_out=held_out, eval_every=eval_every, patience=patience,
                            eval_max_bytes=eval_max_bytes, max_minutes=max_minutes, save_adapter=save_adapter,
                            gradient_checkpointing=gradient_checkpointing, compare_base=compare_base, seed=seed,
                            device=device, force=force, trust_remote_code=trust_remote_code)
        run_job(run_heal, config, as_json=as_json, view="print_heal")


def compare(
    ctx: typer.Context,
    base: Path = typer.Argument(..., help="Base checkpoint directory."),
    donor: Path = typer.Argument(..., help="Donor tokenizer directory, or a full donor model directory."),
    text: List[Path] = typer.Option(..., "--text", help=f"Text to score every method on: {FILES}."),
    methods: Optional[str] = typer.Option(None, "--methods",
                                          help="Comma-separated methods to run [default: every registered method, "
                                               "zero included as the floor]."),
    option: Optional[List[str]] = typer.Option(None, "--option", help="Method option METHOD.KEY=VALUE (repeatable), "
                                                                      "e.g. omp.k=32."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Keep the best model (and its report) here."),
    max_bytes: Optional[int] = typer.Option(None, help="Score only the first bytes of each text."),
    corpus: Optional[List[Path]] = typer.Option(None, "--corpus",
                                                help=f"Text the corpus methods learn from: {FILES}."),
    seed: int = typer.Option(TransplantConfig.seed, help="Random seed (methods that sample)."),
    device: str = typer.Option(TransplantConfig.device, help="auto, cpu or cuda."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    trust_remote_code: bool = trust_remote_code_option(),
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
    with user_errors(ctx):
        from ..jobs.compare import compare as run_compare
        from ..config import CompareConfig

        config = CompareConfig(base=base, donor=donor, texts=text_paths(text), out=out, max_bytes=max_bytes,
                               methods=tuple(m.strip() for m in (methods or "").split(",") if m.strip()),
                               method_options=method_options(option or []), seed=seed, device=device,
                               corpus=text_paths(corpus), force=force, trust_remote_code=trust_remote_code,
                               allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite)
        run_job(run_compare, config, as_json=as_json, view="print_compare")


hypernet_app = typer.Typer(cls=Group, help="The hypernetwork of `transplant --method hypernet` (Zero-Shot Tokenizer Transfer).",
                           no_args_is_help=True)


@hypernet_app.command("train", cls=Command)
def hypernet_train(
    ctx: typer.Context,
    base: Path = typer.Argument(..., help="Base checkpoint directory the network embeds tokens for."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory (hypernet.safetensors + hypernet.json)."),
    corpus: Optional[List[Path]] = typer.Option(None, "--corpus", help=f"Text for the LM stage: {FILES}."),
    steps: int = typer.Option(HypernetConfig.steps, help="Warm-up steps (on the base vocabulary)."),
    lm_steps: int = typer.Option(HypernetConfig.lm_steps, help="LM-stage steps on --corpus, base model frozen."),
    width: Optional[int] = typer.Option(HypernetConfig.width,
                                        help="Transformer width [default: hidden size on CUDA, 128 on CPU]."),
    seed: int = typer.Option(HypernetConfig.seed, help="Random seed."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the training record as JSON."),
    trust_remote_code: bool = trust_remote_code_option(),
) -> None:
    """Train a hypernetwork for BASE once; reuse it for any donor with `transplant --hypernet OUT`.

    Example: `tokensurgeon hypernet train ./SmolLM2-135M -o ./smollm2-hn --corpus news.txt --lm-steps 100`
    """
    with user_errors(ctx):
        from ..jobs.hypernet_train import train_to_directory

        config = HypernetConfig(steps=steps, lm_steps=lm_steps, width=width, seed=seed)
        with progress_bars(not as_json and sys.stderr.isatty()) as progress:
            record = train_to_directory(base, out, config, corpus=text_paths(corpus), device=device, force=force,
                                        trust_remote_code=trust_remote_code, progress=progress)
    show(record, as_json=as_json, view="print_hypernet", payload=record)
