"""What ``--train`` makes trainable, and which rows may move: the transplant's provenance names the rows
it computed (free), copies of rows the base barely trained are freed too, and the others are anchored
(``embeddings``, ``lora``) or frozen by a gradient hook (``rows``). ``batch_rows`` also freezes, step by
step, the rows of tokens the batch does not hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.recovery.options import RecoveryOptions
from tokensurgeon.recovery.student import add_lora, head_weight, unwrap

UNTRAINED_PATHS = ("copy", "padding-mean")  # provenance paths of rows a transplant did not compute


def read_provenance(patched: Path, n_rows: int) -> list[dict[str, Any]] | None:
    """The transplant's provenance.jsonl rows, or None when there is none."""
    source = Path(patched) / "provenance.jsonl"
    if not source.is_file():
        return None
    try:
        rows = [json.loads(line) for line in source.read_text(encoding="utf-8").split("\n") if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenSurgeonError(f"{source}: unreadable provenance ({exc})") from exc
    if len(rows) != n_rows:
        raise TokenSurgeonError(f"{source}: describes {len(rows)} rows but the checkpoint has {n_rows}; "
                                "it belongs to another checkpoint")
    return rows


def free_rows(provenance: list[dict[str, Any]] | None, undertrained: set[int]) -> list[int] | None:
    """Rows trained without anchor: computed rows and copies of barely trained base rows (None = unknown)."""
    if provenance is None:
        return None
    return [int(row["id"]) for row in provenance
            if row["path"] not in UNTRAINED_PATHS
            or (row["path"] == "copy" and any(int(s) in undertrained for s in row.get("sources", [])))]


def embedding_params(model: Any) -> dict[str, torch.nn.Parameter]:
    """Input matrix and, when untied, the head, by state-dict name (the names a checkpoint stores)."""
    base = unwrap(model)
    embed = base.get_input_embeddings().weight
    head = head_weight(model)
    names: dict[int, str] = {}
    for name, p in base.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), name)  # a tied matrix goes by its input name
    params = {names[id(embed)]: embed}
    if head is not embed:
        params[names[id(head)]] = head
    return params


def keep_rows(params: list[torch.nn.Parameter], ids: torch.Tensor) -> None:
    """Zero the gradient of every row but ids (options.batch_rows), so Adam leaves the others where they are."""
    for param in params:
        if param.grad is not None:
            keep = torch.zeros((param.shape[0], 1), dtype=param.grad.dtype, device=param.grad.device)
            keep[ids.to(param.grad.device)] = 1
            param.grad.mul_(keep)


class BatchRows:
    """--batch-rows: in each step only the rows of tokens in that step's batch move.

    Zeroing the other rows' gradients (keep_rows) is not enough under Adam. A row seen in an earlier step keeps
    moving on its momentum for some ten steps after, out of the anchor's reach: at anchor weight 100 P2's copied
    rows drifted exactly as far as at weight 1 (docs/heal.md). So the rows seen before but not now are put back
    after the optimizer's step. Rows never seen have no momentum and need nothing.
    """

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.seen = [torch.zeros(p.shape[0], dtype=torch.bool, device=p.device) for p in params]
        self.held: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []

    def before_step(self, ids: torch.Tensor) -> None:
        """After backward: keep only ids' gradients, and hold the values of rows seen before but not in ids."""
        keep_rows(self.params, ids)
        self.held = []
        for param, seen in zip(self.params, self.seen):
            now = torch.zeros_like(seen)
            now[ids.to(seen.device)] = True
            rows = (seen & ~now).nonzero().flatten()
            self.held.append((param, rows, param.detach()[rows].clone()))
            seen |= now

    def after_step(self) -> None:
        with torch.no_grad():
            for param, rows, values in self.held:
                param[rows] = values
        self.held = []


def prepare(model: Any, options: RecoveryOptions, free: list[int] | None
            ) -> tuple[Any, dict[str, torch.nn.Parameter], list[tuple[torch.nn.Parameter, torch.Tensor | None, torch.Tensor]]]:
    """Make exactly what options.train names trainable: (model, trainable params by name, anchors).

    rows: free rows only (a gradient hook zeroes the others, so Adam never moves them); embeddings: every
    row, the rows not in free anchored; lora: that plus LoRA adapters (PEFT freezes the embeddings, so
    they are re-enabled after wrapping); all: every weight, the embeddings as under embeddings. free None
    (no provenance): rows cannot run, every row is anchored.
    """
    model.requires_grad_(options.train == "all")
    if options.train == "lora":
        model = add_lora(model, rank=options.lora_rank, targets=options.lora_targets)
    embeddings = embedding_params(model)
    device = next(iter(embeddings.values())).device
    anchors = []
    for name, param in embeddings.items():
        param.requires_grad_(True)
        if options.train == "rows":
            if free is None:
                raise TokenSurgeonError("--train rows needs the transplant's provenance.jsonl to know which rows "
                                        "it computed; use --train embeddings or lora")
            mask = torch.zeros((param.shape[0], 1), device=device)
            mask[free] = 1.0
            param.register_hook(lambda grad, mask=mask: grad * mask)
        elif options.anchor_weight:
            anchored = None if free is None else sorted(set(range(param.shape[0])) - set(free))
            index = None if anchored is None else torch.tensor(anchored, dtype=torch.long, device=device)
            anchors.append((param, index, (param if index is None else param[index]).detach().clone()))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if options.gradient_checkpointing:
        unwrap(model).gradient_checkpointing_enable()
        unwrap(model).enable_input_require_grads()
    return model, trainable, anchors


def learning_rates(trainable: dict[str, torch.nn.Parameter], embeddings: dict[str, torch.nn.Parameter],
                   options: RecoveryOptions) -> list[dict[str, Any]]:
    """AdamW parameter groups: embeddings at lr, LoRA adapters at lora_lr, any other weight (train all) at body_lr."""
    rows = {id(p) for p in embeddings.values()}
    by_kind: dict[str, list[torch.nn.Parameter]] = {"lr": [], "lora_lr": [], "body_lr": []}
    for name, param in trainable.items():
        kind = "lr" if id(param) in rows else "lora_lr" if "lora_" in name else "body_lr"
        by_kind[kind].append(param)
    return [{"params": params, "lr": getattr(options, kind)} for kind, params in by_kind.items() if params]


def trainable_counts(trainable: dict[str, torch.nn.Parameter], options: RecoveryOptions,
                     free: list[int] | None) -> dict[str, int]:
    """Parameters that can move, per tensor: under ``rows`` only the free rows of each matrix, not all of it."""
    if options.train == "rows" and free is not None:
        return {name: len(free) * p.shape[1] for name, p in trainable.items()}
    return {name: p.numel() for name, p in trainable.items()}
