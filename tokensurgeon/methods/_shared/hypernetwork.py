"""A hypernetwork that embeds any token from its pieces (Zero-Shot Tokenizer Transfer, Minixhofer,
Ponti & Vulić, arXiv 2405.07883), in PyTorch and small enough to train on one CPU.

A token's decomposition under the base tokenizer is a short sequence of base embedding rows; a small
transformer encoder reads it (a learned summary position pooled at the front) and predicts the
token's row in the base model's space, one head per matrix when input and output embeddings are
untied. The prediction is the pieces' mean plus a learned correction whose last layer starts at
zero, so an untrained network *is* subword-mean and training can only move away from it on evidence.

Training has two stages, as in the paper:

1. warm-up: every base token is spelled by *other* base tokens (fewest pieces with the token itself
   removed, pieces sometimes split further) and the network learns to predict the token's own rows;
   a held-out share of tokens measures how well that generalises to tokens it never saw.
2. optional language-model stage on text: the frozen base model reads text in which a random share
   of the tokens get predicted rows (as inputs and as output-head rows); the LM loss plus a
   reconstruction loss train the network through ``inputs_embeds`` only.

Nothing in it depends on a donor, so one trained network serves every donor on the same base;
hypernet.json records the base's embedding fingerprint and loading it for another base is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...config import HypernetConfig
from ...errors import MethodError
from ...runtime.memory import tensor_sha256
from ...runtime.progress import Progress
from ...vocab import Vocabulary
from ...vocab.alignment import fewest_pieces

FORMAT = "tokensurgeon-hypernet"
WEIGHTS, CONFIG = "hypernet.safetensors", "hypernet.json"
_PREDICT_BLOCK = 4096


class Hypernet(nn.Module):
    """Pieces' base rows (all matrices side by side) -> one row per matrix: mean + scale * correction."""

    def __init__(self, hidden: int, matrices: int, width: int, layers: int, heads: int, max_pieces: int) -> None:
        super().__init__()
        self.hidden, self.matrices, self.max_pieces = hidden, matrices, max_pieces
        self.register_buffer("scale", torch.ones(matrices))  # per-matrix std: inputs and outputs in unit scale
        self.proj_in = nn.Linear(hidden * matrices, width)
        self.summary = nn.Parameter(torch.randn(width) * 0.02)
        self.position = nn.Parameter(torch.randn(max_pieces + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, hidden * matrices)
        nn.init.zeros_(self.head.weight)  # untrained: exactly the pieces' mean (subword-mean)
        nn.init.zeros_(self.head.bias)

    def forward(self, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """rows (B, L, matrices, hidden) of the pieces, mask (B, L) True where a piece is -> (B, matrices, hidden)."""
        batch, length = mask.shape
        weights = mask.to(rows.dtype) / mask.sum(dim=1, keepdim=True).clamp(min=1).to(rows.dtype)
        mean = torch.einsum("bl,blmh->bmh", weights, rows)
        scale = self.scale.view(1, 1, -1, 1)
        x = self.proj_in((rows / scale).flatten(2))
        x = torch.cat([self.summary.expand(batch, 1, -1), x], dim=1) + self.position[:length + 1]
        keep = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=mask.device), mask], dim=1)
        x = self.encoder(x, src_key_padding_mask=~keep)
        correction = self.head(self.norm(x[:, 0])).view(batch, self.matrices, self.hidden)
        return mean + correction * scale.squeeze(1)


def architecture(net: Hypernet) -> dict[str, int]:
    layer = net.encoder.layers[0]
    return {"hidden": net.hidden, "matrices": net.matrices, "width": net.proj_in.out_features,
            "layers": len(net.encoder.layers), "heads": layer.self_attn.num_heads, "max_pieces": net.max_pieces}


def build_hypernet(matrices: Sequence[torch.Tensor], config: HypernetConfig, device: torch.device) -> Hypernet:
    """A fresh network for these base matrices, seeded (the global RNG is left as it was)."""
    hidden = matrices[0].shape[1]
    width = config.width or (hidden if device.type == "cuda" else min(hidden, 128))
    width = -(-width // config.heads) * config.heads
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = Hypernet(hidden, len(matrices), width, config.layers, config.heads, config.max_pieces)
    net.scale.copy_(torch.stack([m.float().std() for m in matrices]).cpu())
    return net.to(device)


def fingerprint(matrices: Sequence[torch.Tensor]) -> dict[str, Any]:
    """What ties a network to its base: shape and sha256 of each matrix's float32 values."""
    return {"rows": matrices[0].shape[0], "hidden": matrices[0].shape[1], "tied": len(matrices) == 1,
            "sha256": [tensor_sha256(m.detach().float().cpu()) for m in matrices]}


def gather_pieces(matrices: Sequence[torch.Tensor], pieces: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad piece lists into (B, L, matrices, hidden) rows and a (B, L) mask, on the matrices' device."""
    device = matrices[0].device
    length = max(len(p) for p in pieces)
    ids = torch.zeros(len(pieces), length, dtype=torch.long)
    mask = torch.zeros(len(pieces), length, dtype=torch.bool)
    for row, group in enumerate(pieces):
        ids[row, :len(group)] = torch.tensor(group, dtype=torch.long)
        mask[row, :len(group)] = True
    ids, mask = ids.to(device), mask.to(device)
    return torch.stack([m[ids].float() for m in matrices], dim=2), mask


def predict(net: Hypernet, matrices: Sequence[torch.Tensor], pieces: Sequence[Sequence[int]]) -> torch.Tensor:
    """(n, matrices, hidden) predicted rows for non-empty piece lists of at most max_pieces, in blocks."""
    out = torch.empty(len(pieces), net.matrices, net.hidden, device=matrices[0].device)
    was_training = net.training
    net.eval()
    with torch.no_grad():
        for start in range(0, len(pieces), _PREDICT_BLOCK):
            block = pieces[start:start + _PREDICT_BLOCK]
            out[start:start + len(block)] = net(*gather_pieces(matrices, block))
    net.train(was_training)
    return out


@dataclass
class WarmupData:
    """Base tokens spelled by other base tokens; ``train`` and ``heldout`` split the ids."""

    pieces: dict[int, tuple[int, ...]]
    train: list[int]
    heldout: list[int]

    def sample(self, token_id: int, rng: random.Random, expand: float, max_pieces: int) -> tuple[int, ...]:
        """The token's split, each piece split further (by its own split) with chance ``expand``, twice."""
        group = self.pieces[token_id]
        for _ in range(2):
            grown = tuple(q for p in group
                          for q in (self.pieces[p] if p in self.pieces and rng.random() < expand else (p,)))
            if len(grown) > max_pieces:
                break
            group = grown
        return group


def warmup_data(vocab: Vocabulary, rows: int, holdout: float, seed: int) -> WarmupData:
    """Split every ordinary multi-byte base token into the fewest *other* base tokens; hold out a share."""
    lookup = vocab.bytes_to_id()
    pieces: dict[int, tuple[int, ...]] = {}
    for token_id, raw in enumerate(vocab.canonical):
        if raw is None or len(raw) < 2 or token_id >= rows or lookup.get(raw) != token_id:
            continue
        del lookup[raw]
        split = fewest_pieces(raw, lookup, len(raw) - 1)
        lookup[raw] = token_id
        if split and max(split) < rows:
            pieces[token_id] = split
    ids = sorted(pieces)
    random.Random(seed).shuffle(ids)
    cut = int(round(len(ids) * holdout))
    return WarmupData(pieces, sorted(ids[cut:]), sorted(ids[:cut]))


def relative_error(predicted: torch.Tensor, target: torch.Tensor, centre: torch.Tensor) -> float:
    """Squared error over squared distance from the mean row: 0 is perfect, 1 is no better than the mean."""
    return float(((predicted - target) ** 2).sum() / ((target - centre) ** 2).sum().clamp(min=1e-12))


def reconstruction(net: Hypernet, matrices: Sequence[torch.Tensor], data: WarmupData) -> dict[str, float]:
    """Held-out reconstruction error of the network, and of the plain subword mean, on the same tokens."""
    ids = [i for i in data.heldout if len(data.pieces[i]) <= net.max_pieces]
    if not ids:
        return {}
    pieces = [data.pieces[i] for i in ids]
    target = torch.stack([m[ids].float() for m in matrices], dim=1)
    centre = torch.stack([m.float().mean(dim=0) for m in matrices])
    rows, mask = gather_pieces(matrices, pieces)
    mean = (rows * mask[..., None, None]).sum(dim=1) / mask.sum(dim=1).view(-1, 1, 1)
    return {"heldout_tokens": len(ids), "heldout_error": round(relative_error(predict(net, matrices, pieces), target, centre), 5),
            "heldout_error_subword_mean": round(relative_error(mean, target, centre), 5)}


def _schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over 5% of the steps, then cosine decay to a tenth."""
    warm = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warm if s < warm
        else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))


def _optimise(net: Hypernet, optimizer: torch.optim.Optimizer, scheduler: Any, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()
    scheduler.step()


class _LossCurve:
    """Mean loss over every ``every`` steps (and the last, shorter stretch): the curve hypernet.json keeps."""

    def __init__(self, every: int, digits: int) -> None:
        self.every, self.digits, self.points, self.running, self.count = every, digits, [], 0.0, 0

    def add(self, loss: float, step: int, steps: int) -> None:
        self.running, self.count = self.running + loss, self.count + 1
        if (step + 1) % self.every == 0 or step + 1 == steps:
            self.points.append(round(self.running / self.count, self.digits))
            self.running, self.count = 0.0, 0


def _unit_mse(net: Hypernet, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (((predicted - target) / net.scale.view(1, -1, 1)) ** 2).mean()


@contextlib.contextmanager
def one_cpu_thread(device: torch.device):
    """The warm-up's operations are small: on CPU a thread pool's synchronisation costs more than it
    saves (10x slower on a busy 2-core machine), so one thread; the caller's setting comes back after."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_warmup(net: Hypernet, matrices: Sequence[torch.Tensor], data: WarmupData, config: HypernetConfig,
                 progress: Progress | None = None) -> list[float]:
    """Fit the network to predict each training base token's rows from its split; returns the loss curve."""
    if not config.steps or not data.train:
        return []
    with one_cpu_thread(matrices[0].device):
        return _warmup_steps(net, matrices, data, config, progress)


def _warmup_steps(net: Hypernet, matrices: Sequence[torch.Tensor], data: WarmupData, config: HypernetConfig,
                  progress: Progress | None) -> list[float]:
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=0.01)
    scheduler = _schedule(optimizer, config.steps)
    device = matrices[0].device
    curve = _LossCurve(every=50, digits=5)
    net.train()
    for step in range(config.steps):
        ids = [data.train[rng.randrange(len(data.train))] for _ in range(config.batch_size)]
        pieces = [data.sample(i, rng, config.expand, net.max_pieces) for i in ids]
        index = torch.tensor(ids, device=device)
        target = torch.stack([m[index].float() for m in matrices], dim=1)
        loss = _unit_mse(net, net(*gather_pieces(matrices, pieces)), target)
        _optimise(net, optimizer, scheduler, loss)
        curve.add(loss.item(), step, config.steps)
        if progress:
            progress("warm-up", step + 1, config.steps)
    return curve.points


def corpus_windows(texts: Sequence[str], tokenizer: Any, vocab: Vocabulary, seq_len: int) -> torch.Tensor:
    """Windows of ``seq_len`` base tokens, each led by BOS (EOS when there is none), from the texts."""
    lead = vocab.roles.get("bos", vocab.roles.get("eos"))
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    body = seq_len - (lead is not None)
    windows = [([lead] if lead is not None else []) + ids[s:s + body] for s in range(0, len(ids) - body + 1, body)]
    if not windows:
        raise MethodError(f"hypernet: the corpus has {len(ids)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(windows, dtype=torch.long)


def load_frozen_model(base_path: Path, device: torch.device) -> Any:
    """The base model in float32 with every parameter frozen: gradients reach only ``inputs_embeds``."""
    from transformers import AutoModelForCausalLM

    from ...runtime.quiet import quiet_transformers

    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model.requires_grad_(False)
    return model.to(device).eval()


def train_lm(net: Hypernet, matrices: Sequence[torch.Tensor], data: WarmupData, model: Any, windows: torch.Tensor,
             config: HypernetConfig, progress: Progress | None = None) -> list[float]:
    """LM stage: a random share of the distinct training tokens in each batch get predicted rows (input
    embedding and output-head row); loss = LM loss + aux_weight x reconstruction. Returns the LM loss curve."""
    device = matrices[0].device
    rng = random.Random(config.seed + 1)
    trainable = torch.zeros(matrices[0].shape[0], dtype=torch.bool, device=device)
    trainable[torch.tensor(data.train, device=device)] = True
    embed, output = matrices[0], matrices[-1]
    embed_scale = getattr(model.get_input_embeddings(), "embed_scale", None)  # Gemma scales inside the module
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lm_lr, weight_decay=0.01)
    scheduler = _schedule(optimizer, config.lm_steps)
    backbone = model.base_model
    curve = _LossCurve(every=10, digits=4)
    net.train()
    for step in range(config.lm_steps):
        batch = windows[[rng.randrange(len(windows)) for _ in range(config.lm_batch)]].to(device)
        present = batch.unique()
        present = present[trainable[present]].tolist()
        chosen = sorted(rng.sample(present, max(1, int(len(present) * config.replace)))) if present else []
        inputs = embed[batch].float()
        logits_rows = None
        if chosen:
            chosen_t = torch.tensor(chosen, device=device)
            pieces = [data.sample(i, rng, config.expand, net.max_pieces) for i in chosen]
            predicted = net(*gather_pieces(matrices, pieces))  # (k, matrices, hidden)
            slot = torch.full((embed.shape[0],), -1, dtype=torch.long, device=device)
            slot[chosen_t] = torch.arange(len(chosen), device=device)
            where = slot[batch]
            inputs = torch.where((where >= 0)[..., None], predicted[:, 0][where.clamp(min=0)], inputs)
            logits_rows = predicted[:, -1]
        if embed_scale is not None:
            inputs = inputs * embed_scale.to(inputs.dtype)
        hidden = backbone(inputs_embeds=inputs).last_hidden_state[:, :-1]
        logits = hidden @ output.float().T
        if chosen:
            logits = logits.index_copy(-1, chosen_t, hidden @ logits_rows.T)
        lm_loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss = lm_loss
        if chosen:
            target = torch.stack([m[chosen_t].float() for m in matrices], dim=1)
            loss = loss + config.aux_weight * _unit_mse(net, predicted, target)
        _optimise(net, optimizer, scheduler, loss)
        curve.add(lm_loss.item(), step, config.lm_steps)
        if progress:
            progress("lm stage", step + 1, config.lm_steps)
    return curve.points


@dataclass
class TrainedHypernet:
    """A network and its record (hypernet.json's contents)."""

    net: Hypernet
    record: dict[str, Any]


def train_hypernet(matrices: Sequence[torch.Tensor], vocab: Vocabulary, config: HypernetConfig, *,
                   base_path: Path | None = None, tokenizer: Any = None, corpus: Sequence[Path] = (),
                   progress: Progress | None = None) -> TrainedHypernet:
    """Warm-up on the base vocabulary, then the LM stage when there is corpus text and a base model."""
    device = matrices[0].device
    started = time.perf_counter()
    data = warmup_data(vocab, matrices[0].shape[0], config.holdout, config.seed)
    net = build_hypernet(matrices, config, device)
    untrained = reconstruction(net, matrices, data)
    warm_curve = train_warmup(net, matrices, data, config, progress)
    after_warmup = reconstruction(net, matrices, data)
    lm_curve: list[float] = []
    lm_steps = config.lm_steps if corpus and base_path is not None and tokenizer is not None else 0
    if lm_steps:
        texts = [Path(p).read_text(encoding="utf-8", errors="replace") for p in corpus]
        windows = corpus_windows(texts, tokenizer, vocab, config.seq_len)
        model = load_frozen_model(base_path, device)
        lm_curve = train_lm(net, matrices, data, model, windows, config, progress)
        del model
    record = {
        "format": FORMAT, "version": 1, "base": fingerprint(matrices), "architecture": architecture(net),
        "training": {"config": dataclasses.asdict(config) | {"lm_steps": lm_steps}, "device": str(device),
                     "warmup_tokens": len(data.train), "corpus": [str(p) for p in corpus] if lm_steps else [],
                     "warmup_loss": warm_curve, "lm_loss": lm_curve,
                     "seconds": round(time.perf_counter() - started, 1),
                     "heldout_error_untrained": untrained.get("heldout_error"),
                     "heldout_error_after_warmup": after_warmup.get("heldout_error"),
                     **reconstruction(net, matrices, data)},
    }
    return TrainedHypernet(net.eval(), record)
