"""Commands that look at or change a vocabulary: inspect, transplant."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..config import DEFAULT_METHOD, TransplantConfig
from ..errors import TokenSurgeonError
from .common import FILES, parse_options, read_texts, run_job, show, text_paths, trust_remote_code_option, user_errors


def inspect(
    ctx: typer.Context,
    base: Path = typer.Argument(..., help="Base model or tokenizer directory (with --audit: a transplant output)."),
    donor: Optional[Path] = typer.Argument(None, help="Donor model or tokenizer directory (not with --audit)."),
    text: Optional[List[Path]] = typer.Option(None, "--text", help=f"Text to measure splits on: {FILES}."),
    audit: bool = typer.Option(False, "--audit", help="Audit the computed rows of the transplant output BASE against "
                                                      "the base and donor its report.json names (docs/audit.md)."),
    samples: int = typer.Option(12, help="How many new tokens to show with their base decomposition."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    trust_remote_code: bool = trust_remote_code_option(),
) -> None:
    """Show how the donor vocabulary overlaps the base vocabulary.

    Example: `tokensurgeon inspect ./SmolLM2-135M ./llama3 --text news.txt --json`

    Audit an existing output: `tokensurgeon inspect ./smollm2-llama3 --audit`
    """
    with user_errors(ctx):
        if audit:  # inspect, not a command of its own: it looks at an output and changes nothing
            from ..pipeline.audit import audit_output

            if donor is not None or text:
                raise TokenSurgeonError("--audit reads base and donor from OUT/report.json: pass only the output "
                                        "directory (tokensurgeon inspect OUT --audit)")
            result, view = audit_output(base, trust_remote_code=trust_remote_code), "print_audit"
        else:
            from ..vocab.overlap import compare_tokenizers
            from ..vocab.pair import load_pair

            if donor is None:
                raise TokenSurgeonError("missing DONOR: pass a donor tokenizer or model directory (or an output "
                                        "directory with --audit)")
            texts = read_texts(text)
            pair = load_pair(base, donor, trust_remote_code=trust_remote_code)
            result = compare_tokenizers(pair.alignment, pair.base_vocab, pair.donor_vocab, pair.base_tokenizer,
                                        pair.donor_tokenizer, paths=(str(base), str(donor)), texts=texts,
                                        n_samples=samples)
            view = "print_overlap"
    show(result, as_json=as_json, view=view)


def transplant(
    ctx: typer.Context,
    base: Path = typer.Argument(..., help="Base checkpoint directory (config.json, safetensors, tokenizer)."),
    donor: Optional[Path] = typer.Argument(None, help="Donor tokenizer directory, or a full donor model directory "
                                                      "(may be omitted with --as-draft-for)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory for the patched checkpoint."),
    method: Optional[str] = typer.Option(None, help=f"Initialisation method for new tokens (see `methods`) "
                                                    f"[default: {DEFAULT_METHOD}]."),
    option: Optional[List[str]] = typer.Option(None, "--option", help="Method option KEY=VALUE (repeatable)."),
    seed: int = typer.Option(TransplantConfig.seed, help="Random seed (methods that sample)."),
    device: str = typer.Option(TransplantConfig.device, help="auto, cpu or cuda."),
    chat_template: str = typer.Option(TransplantConfig.chat_template, help="Chat template to keep: donor or base."),
    pad_to_multiple: int = typer.Option(TransplantConfig.pad_to_multiple, help="Pad the embedding rows up to a multiple of this."),
    eval_text: Optional[List[Path]] = typer.Option(None, "--eval-text", help=f"Text for bits per byte before/after: {FILES}."),
    corpus: Optional[List[Path]] = typer.Option(None, "--corpus",
                                                help=f"Text a method learns from (focus, tokenadapt, hypernet): {FILES}."),
    eval_max_bytes: Optional[int] = typer.Option(None, help="Evaluate at most this many bytes of each text."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    trust_remote_code: bool = trust_remote_code_option(),
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
    recompute_undertrained: bool = typer.Option(TransplantConfig.recompute_undertrained, "--recompute-undertrained",
                                                help="Compute, not copy, shared tokens whose base row the base barely "
                                                     "trained (<0xNN> byte fallback, low norm)."),
) -> None:
    """Give BASE the DONOR's tokenizer and write a patched checkpoint plus a report.

    Example: `tokensurgeon transplant ./SmolLM2-135M ./llama3 -o out --eval-text news.txt`

    Draft model for speculative decoding: `tokensurgeon transplant ./SmolLM2-135M --as-draft-for ./gemma-3-270m -o draft`
    """
    with user_errors(ctx):
        from ..pipeline.transplant import transplant as run_transplant

        if donor is None and as_draft_for is None:
            raise TokenSurgeonError("missing DONOR: pass a donor tokenizer or model directory (or --as-draft-for TARGET)")
        config = TransplantConfig(base=base, donor=donor or as_draft_for, out=out,
                                  method=method,
                                  method_options=parse_options(option or [])
                                  | ({"hypernet": str(hypernet)} if hypernet else {}), seed=seed, device=device,
                                  chat_template=chat_template, pad_to_multiple=pad_to_multiple,
                                  eval_texts=text_paths(eval_text), eval_max_bytes=eval_max_bytes, force=force,
                                  trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                                  allow_nonfinite=allow_nonfinite, corpus=text_paths(corpus),
                                  draft_for=as_draft_for, recompute_undertrained=recompute_undertrained)
        run_job(run_transplant, config, as_json=as_json, view="print_transplant")
