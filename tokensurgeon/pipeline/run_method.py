"""One method run on a session's matrices: the method's inputs checked, working copies made, rows computed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import TransplantConfig
from ..errors import MethodError
from ..methods import InitContext, InitResult, get_init_method
from ..runtime.devices import resolve_device
from ..runtime.memory import release_pages, trim_heap
from ..runtime.progress import Progress, phase
from .session import Session


def run_method(config: TransplantConfig, session: Session, progress: Progress | None) -> InitResult:
    """Run config's method on the session's matrices; MethodError when its inputs are missing."""
    method = get_init_method(config.method, **config.method_options)
    device = resolve_device(config.device)
    pair, donor_model = session.pair, session.donor_model
    donor_embed = donor_head = None
    if method.needs_donor_embeddings and donor_model is None:
        raise MethodError(f"method {config.method!r} needs the donor model's embeddings, but {config.donor} "
                          "is a tokenizer only; pass a full model directory or pick a tokenizer-only method")
    # a method that can work without them (focus, tokenadapt) still gets them when the donor is a model
    reads_donor = donor_model is not None and (method.needs_donor_embeddings or method.uses_donor_embeddings)
    if reads_donor:
        if donor_model.vocab_rows < pair.donor_vocab.size:
            raise MethodError(f"{config.donor}: donor tokenizer defines {pair.donor_vocab.size} ids but the donor "
                              f"model has only {donor_model.vocab_rows} embedding rows; tokenizer and weights do not "
                              "belong together")
    # float32 working copies, unless the method upcasts the rows it reads (then bf16 stays bf16: half the memory)
    working = (lambda m: m.to(device)) if method.upcasts_rows else (lambda m: m.float().to(device))
    if reads_donor:
        donor_embed, donor_head = (working(m) if m is not None else None for m in session.donor_matrices())
    base_embed, base_head = session.base_embed, session.base_head
    ctx = InitContext(pair.alignment, pair.base_vocab, pair.donor_vocab, working(base_embed),
                      working(base_head) if base_head is not None else None, donor_embed, donor_head,
                      device, config.seed, phase(progress, "method"),
                      tokenizers=pair, base_path=Path(config.base), corpus=tuple(Path(p) for p in config.corpus))
    # the session's mean rows serve where the method works on the session's very matrices (no copy, no device move)
    for role, matrix, stats in (("embed", base_embed, session.embed_stats), ("head", base_head, session.head_stats)):
        if stats is not None and getattr(ctx, f"base_{role}") is matrix:
            ctx.base_means[role] = stats.mean
    # peak memory should follow the embeddings: a method that needs a tokenizer reloads it, but a corpus is
    # only ever read through the donor tokenizer (auxiliary spaces), so that one stays when a corpus is given
    pair.release_tokenizers(keep=("donor",) if config.corpus and not reads_donor else ())
    result = method.initialise(ctx)
    if result.embed.device.type != "cpu":  # the audit and the writer work on the CPU, whatever the method ran on
        result = replace(result, embed=result.embed.cpu(), head=None if result.head is None else result.head.cpu())
    for matrix in (base_embed, base_head) + (session.donor_matrices_read or ()):
        release_pages(matrix)
    trim_heap()  # the method's freed working memory, else writing the output starts from the method's peak
    return result
