"""Heal a patched checkpoint: a short language-model fine-tune of its embedding rows only.

Initialisation cannot move the floor a transplant hits where the donor tokenizer cuts text in
ways the base model never saw; a little continued training of the embeddings closes much of
that gap (ZeTT, the OMP paper). Every transformer weight stays frozen (no gradient, no
optimizer state), so memory stays near the model plus three copies of the embedding matrix.

Training every row can also make things worse (measured: English bits per byte doubled after
100 steps at lr 1e-3), so heal has guards:

* ``rows="new"`` (default) trains only the rows the transplant computed, read from its
  provenance.jsonl; copied rows get a zero gradient, hence no Adam moment and no update.
* Held-out stop: the last fraction of each text is held out and scored with evaluation/bpb.py's
  bits per byte before training and every ``eval_every`` steps. A state counts as better only
  when it lowers the mean over texts and raises no text's score; the best one is kept and the
  output equals the input when no state is better.
* ``rows="all"`` adds an L2 anchor pulling rows that had trusted values (copied rows, or every
  row of a checkpoint without provenance) back to where they started.

The output is the input checkpoint with only the embedding tensors rewritten (stored dtype kept,
untrained rows byte-identical), its other files copied, plus heal.json.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import __version__
from ..checkpoint import Checkpoint, open_checkpoint, read_embeddings
from ..checkpoint.formats.safetensors import INDEX_NAME
from ..checkpoint.writer import write_weights
from ..config import EvalConfig, HealConfig
from ..errors import TokenSurgeonError
from ..evaluation import TextScore, evaluate_models, load_for_eval, score_text
from ..evaluation.bpb import context_prefix, truncate_utf8
from ..runtime.devices import resolve_device
from ..runtime.outdir import atomic_directory, check_output_path
from ..runtime.progress import Progress, Stopwatch, phase

UNTRAINED_PATHS = ("copy", "padding-mean")  # provenance paths of rows whose values a transplant did not compute


@dataclass
class HealReport:
    """What heal did and what it bought: held-out bits per byte per text, before and after."""

    version: str
    patched: str
    out: str
    rows: str
    trainable_rows: int
    steps_run: int
    best_step: int
    improved: bool
    options: dict[str, Any]
    device: str
    texts: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_held_out(text: str, fraction: float) -> tuple[str, str]:
    """(training part, held-out part): the last fraction of the UTF-8 bytes, cut between characters."""
    train = truncate_utf8(text, int(len(text.encode("utf-8")) * (1 - fraction)))
    return train, text[len(train):]


def read_new_rows(patched: Path, n_rows: int) -> list[int] | None:
    """Ids of the rows a transplant computed (its provenance.jsonl), or None when there is no provenance."""
    source = Path(patched) / "provenance.jsonl"
    if not source.is_file():
        return None
    try:
        # split on "\n" only: tokens may hold U+2028 or U+0085, which splitlines() would also split on
        rows = [json.loads(line) for line in source.read_text(encoding="utf-8").split("\n") if line.strip()]
        new = [int(row["id"]) for row in rows if row["path"] not in UNTRAINED_PATHS]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise TokenSurgeonError(f"{source}: unreadable provenance ({exc}); pass --rows all to train every row") from exc
    if len(rows) != n_rows or any(not 0 <= i < n_rows for i in new):
        raise TokenSurgeonError(f"{source}: describes {len(rows)} rows but the checkpoint has {n_rows}; "
                                "it belongs to another checkpoint (pass --rows all to ignore it)")
    return new


def _trainable_rows(config: HealConfig, n_rows: int) -> tuple[list[int] | None, list[int] | None]:
    """(rows to train, None = all; rows to anchor, None = all) by --rows and the provenance."""
    new = read_new_rows(config.patched, n_rows)
    if config.rows == "all":
        anchored = None if new is None else sorted(set(range(n_rows)) - set(new))
        return None, anchored
    if new is None:
        raise TokenSurgeonError(f"{config.patched}: no provenance.jsonl (not a tokensurgeon transplant output), so "
                                "its new rows are unknown; pass --rows all to train every embedding row")
    if not new:
        raise TokenSurgeonError(f"{config.patched}: the transplant computed no rows, so --rows new has nothing to "
                                "train; pass --rows all to train every embedding row")
    return new, []


class _Batches:
    """Training sequences ([BOS] + up to context - 1 tokens) of each text, drawn in a seeded order.

    Batch rows take the texts in turn, so a short text is trained on as often as a long one.
    """

    def __init__(self, tokenizer, texts: dict[str, str], context: int, seed: int) -> None:
        prefix = context_prefix(tokenizer)
        span = context - len(prefix)
        self.chunks = []
        for label, text in texts.items():
            ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            chunks = [prefix + ids[i:i + span] for i in range(0, len(ids), span)]
            chunks = [chunk for chunk in chunks if len(chunk) >= 2]
            if not chunks:
                raise TokenSurgeonError(f"{label}: its training part is too short to train on (give more text "
                                        "or a smaller --held-out)")
            self.chunks.append(chunks)
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = 0

    def next(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, labels) of one right-padded batch; labels -100 on padding."""
        rows = []
        for _ in range(batch_size):
            chunks = self.chunks[self.drawn % len(self.chunks)]
            rows.append(chunks[int(torch.randint(len(chunks), (1,), generator=self.generator))])
            self.drawn += 1
        input_ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        return input_ids, mask, input_ids.masked_fill(mask == 0, -100)


def _score(model, tokenizer, held_out: dict[str, str], config: HealConfig) -> list[TextScore]:
    """evaluation/bpb.py's bits per byte; the training batch size bounds its logits' memory too."""
    return [score_text(model, tokenizer, text, label=label, context=EvalConfig.context,
                       batch_size=config.batch_size, max_bytes=config.eval_max_bytes)
            for label, text in held_out.items()]


def _better(scores: list[TextScore], best: list[TextScore], before: list[TextScore]) -> bool:
    """Lower mean bits per byte than the best so far, and no text worse than before healing."""
    mean = sum(s.bits_per_byte for s in scores) / len(scores)
    best_mean = sum(s.bits_per_byte for s in best) / len(best)
    return mean < best_mean and all(s.bits_per_byte <= b.bits_per_byte for s, b in zip(scores, before))


def _embedding_params(model, checkpoint: Checkpoint) -> dict[str, torch.nn.Parameter]:
    """The trainable matrices by checkpoint tensor name; a tied head is the input matrix itself."""
    embed = model.get_input_embeddings().weight
    head_module = model.get_output_embeddings()
    head = head_module.weight if head_module is not None else embed
    if embed.shape[0] != checkpoint.vocab_rows or (head is embed) != checkpoint.tied:
        raise TokenSurgeonError(f"{checkpoint.path}: the loaded model's embeddings do not match the checkpoint's "
                                "tensors (rows or tying differ)")
    params = {checkpoint.input_name: embed}
    if head is not embed:
        params[checkpoint.output_name] = head
    return params


@dataclass
class _Fit:
    """The outcome of training: the best state's trained rows (empty when step 0 stayed best) and scores."""

    best_rows: dict[str, torch.Tensor]
    before: list[TextScore]
    best: list[TextScore]
    best_step: int
    steps: int
    history: list[dict[str, Any]]


def _train(model, tokenizer, params: dict[str, torch.nn.Parameter], rows: tuple[list[int] | None, list[int] | None],
           train_texts: dict[str, str], held_out: dict[str, str], config: HealConfig,
           progress: Progress | None) -> _Fit:
    """Fine-tune the trainable rows, scoring the held-out text every eval_every steps; keep the best state."""
    train_ids, anchored = rows
    device = next(iter(params.values())).device
    for param in model.parameters():
        param.requires_grad_(False)
    anchors = {}
    for name, param in params.items():
        param.requires_grad_(True)
        if train_ids is not None:
            mask = torch.zeros((param.shape[0], 1), device=device)
            mask[train_ids] = 1.0
            param.register_hook(lambda grad, mask=mask: grad * mask)
        if config.anchor_weight and anchored != []:
            index = None if anchored is None else torch.tensor(anchored, device=device)
            anchors[name] = (index, (param if index is None else param[index]).detach().clone())
    # weight_decay 0: decay would move rows whose gradient is masked to zero
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=0.0)
    batches = _Batches(tokenizer, train_texts, config.context, config.seed)

    def snapshot() -> dict[str, torch.Tensor]:
        return {name: (p if train_ids is None else p[train_ids]).detach().to("cpu", copy=True)
                for name, p in params.items()}

    before = best = _score(model, tokenizer, held_out, config)
    best_rows, best_step, stale, step, losses = {}, 0, 0, 0, []
    history = [{"step": 0, "train_loss": None, "held_out_bpb": [s.bits_per_byte for s in before]}]
    while step < config.steps and stale < config.patience:
        step += 1
        input_ids, mask, labels = (t.to(device) for t in batches.next(config.batch_size))
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        for name, (index, start) in anchors.items():
            current = params[name] if index is None else params[name][index]
            loss = loss + config.anchor_weight * (current - start).pow(2).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress is not None:
            progress("heal", step, config.steps)
        if step % config.eval_every and step != config.steps:
            continue
        scores = _score(model, tokenizer, held_out, config)
        history.append({"step": step, "train_loss": sum(losses) / len(losses),
                        "held_out_bpb": [s.bits_per_byte for s in scores]})
        losses = []
        if _better(scores, best, before):
            best, best_rows, best_step, stale = scores, snapshot(), step, 0
        else:
            stale += 1
    return _Fit(best_rows, before, best, best_step, step, history)


def _healed_tensors(checkpoint: Checkpoint, best_rows: dict[str, torch.Tensor],
                    train_ids: list[int] | None) -> dict[str, torch.Tensor]:
    """The stored embedding tensors with the trained rows replaced, in their stored dtype."""
    embed, head = read_embeddings(checkpoint)
    stored = {checkpoint.input_name: embed}
    if head is not None:
        stored[checkpoint.output_name] = head
    tensors = {}
    for name, rows in best_rows.items():
        if train_ids is None:
            tensors[name] = rows.to(stored[name].dtype)
        else:
            tensors[name] = stored[name].clone()
            tensors[name][train_ids] = rows.to(stored[name].dtype)
    if checkpoint.tied and checkpoint.output_name:  # tied but saved twice: both copies change
        tensors[checkpoint.output_name] = tensors[checkpoint.input_name]
    return tensors


def _base_scores(config: HealConfig, held_out: dict[str, str]) -> list[TextScore] | None:
    """The transplant's base model on the same held-out text (its report.json names it), for ratios."""
    report = Path(config.patched) / "report.json"
    if not config.compare_base or not report.is_file():
        return None
    try:
        base = Path(json.loads(report.read_text(encoding="utf-8"))["base"]["path"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return None
    if not (base / "config.json").is_file():
        return None
    return evaluate_models([base], held_out, device=config.device, context=EvalConfig.context,
                           batch_size=config.batch_size, max_bytes=config.eval_max_bytes,
                           trust_remote_code=config.trust_remote_code)[0].scores


def heal(config: HealConfig, progress: Progress | None = None) -> HealReport:
    """Fine-tune PATCHED's embedding rows on config.texts and write the best state to config.out.

    Raises:
        TokenSurgeonError: bad input (missing directory, no provenance with --rows new, text too short,
            output exists without force).
    """
    clock = Stopwatch()
    device = resolve_device(config.device)
    check_output_path(config.out, [config.patched, *config.texts], force=config.force)
    checkpoint = open_checkpoint(config.patched, trust_remote_code=config.trust_remote_code)
    rows = _trainable_rows(config, checkpoint.vocab_rows)
    texts = {Path(p).name: Path(p).read_text(encoding="utf-8", errors="replace") for p in config.texts}
    splits = {label: split_held_out(text, config.held_out) for label, text in texts.items()}
    held_out = {label: held for label, (_, held) in splits.items()}
    base_scores = _base_scores(config, held_out)
    with torch.random.fork_rng():  # the seed governs this run only, not the caller's generator
        torch.manual_seed(config.seed)
        model, tokenizer = load_for_eval(config.patched, device=device, trust_remote_code=config.trust_remote_code)
        params = _embedding_params(model, checkpoint)
        clock.lap("load")
        fit = _train(model, tokenizer, params, rows, {label: train for label, (train, _) in splits.items()},
                     held_out, config, progress)
        clock.lap("train")
    del model, params
    replacements = _healed_tensors(checkpoint, fit.best_rows, rows[0]) if fit.best_step else {}
    with atomic_directory(config.out) as staging:
        write_weights(checkpoint, staging, replacements, progress=phase(progress, "write"))
        weights = set(checkpoint.files) | {checkpoint.path / INDEX_NAME}
        for source in sorted(Path(config.patched).iterdir()):
            if source.is_file() and source not in weights and source.name != "heal.json":
                shutil.copyfile(source, staging / source.name)
        clock.timings["total"] = clock.total()
        report = HealReport(
            version=__version__, patched=str(config.patched), out=str(config.out), rows=config.rows,
            trainable_rows=checkpoint.vocab_rows if rows[0] is None else len(rows[0]), steps_run=fit.steps,
            best_step=fit.best_step, improved=fit.best_step > 0,
            options={"steps": config.steps, "lr": config.lr, "anchor_weight": config.anchor_weight,
                     "batch_size": config.batch_size, "context": config.context, "held_out": config.held_out,
                     "eval_every": config.eval_every, "patience": config.patience,
                     "eval_max_bytes": config.eval_max_bytes, "seed": config.seed},
            device=str(device),
            texts=[_text_row(label, splits[label], b, a, base_scores[i] if base_scores else None)
                   for i, (label, b, a) in enumerate(zip(texts, fit.before, fit.best))],
            history=fit.history, timings=clock.timings)
        (staging / "heal.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
        _write_card(config, report, staging)
    return report


def _write_card(config: HealConfig, report: HealReport, staging: Path) -> None:
    """README.md: the patched model's card (kept as it was in PATCHED) with a Healing section."""
    from ..report.card import append_section, heal_lines, invoked_command

    fallback = f"tokensurgeon heal {config.patched} -o {config.out} --rows {config.rows} --steps {config.steps}"
    append_section(Path(config.patched), staging, "Healing", heal_lines(report.to_dict()),
                   command=invoked_command(fallback), tags=("healed",))


def _text_row(label: str, split: tuple[str, str], before: TextScore, after: TextScore,
              base: TextScore | None) -> dict[str, Any]:
    row = {"text": label, "train_bytes": len(split[0].encode("utf-8")), "held_out_bytes": before.n_bytes,
           "before_bpb": before.bits_per_byte, "after_bpb": after.bits_per_byte, "base_bpb": None,
           "before_ratio": None, "after_ratio": None}
    if base is not None:
        row |= {"base_bpb": base.bits_per_byte, "before_ratio": before.bits_per_byte / base.bits_per_byte,
                "after_ratio": after.bits_per_byte / base.bits_per_byte}
    return row
