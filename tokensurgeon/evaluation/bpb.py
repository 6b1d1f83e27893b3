"""Tokenizer-independent quality: bits per byte (bpb) of a causal LM on a text.

Per-token perplexity cannot compare a model before and after a tokenizer transplant: the two
tokenizers cut the same text into different numbers of tokens. The total negative
log-likelihood of the text can, so the yardstick is

    bits_per_byte = sum over scored tokens of -log2 p(token | what precedes it) / UTF-8 bytes

The rules below are the same for every tokenizer, so that only the model and its tokenizer
differ between two scores of the same text:

* The whole text is tokenized once, with ``add_special_tokens=False``.
* The tokenizer's BOS token (its EOS token when it has no BOS) is prepended as context only:
  it is never scored, and it lets the first text token be scored, so every token, hence every
  byte, is paid for exactly once. A tokenizer with neither leaves the first text token
  unscored; the UTF-8 bytes of the characters it covers are then left out of ``n_bytes``, and
  ``n_tokens`` counts the scored tokens only.
* Windows: each window is ``[BOS] + tokens[start:end]``, at most ``context`` tokens in all.
  The first starts at 0; each next one starts ``stride`` text tokens later (default
  ``context // 2``, at most ``context - 1``), re-reads the tokens before the previous window's
  end as left context and scores only the tokens after it (the usual strided-perplexity
  scheme). Every window starts with BOS, as in training, so the model keeps its attention sink.
  The number of tokens actually scored is checked against the number of text tokens.
* Windows are batched with right padding and an attention mask: attention is causal, so
  padding after the real tokens cannot change their scores.
* Log-probabilities are taken in float32 over chunks of positions, so memory beyond the
  model's own logits (batch_size x context x vocabulary) stays bounded for a 262k vocabulary.
"""

from __future__ import annotations

import pickle

import functools
import gc
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..checkpoint.formats.pickle import PICKLE_NAMES
from ..checkpoint.reader import read_config, weight_files
from ..errors import TokenSurgeonError
from ..runtime.devices import resolve_device
from ..runtime.progress import Progress, Tick, first_line
from ..runtime.quiet import quiet_transformers

if TYPE_CHECKING:  # importing transformers' model classes costs seconds: a transplant without --eval-text never does
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_LOSS_CHUNK = 1024  # positions per float32 log-softmax: 1024 x 262k vocabulary is 1 GiB


@dataclass(frozen=True)
class TextScore:
    """The score of one model on one text; bits_per_byte is the comparable number."""

    label: str
    n_bytes: int
    n_tokens: int
    nll_bits: float
    bits_per_byte: float
    bytes_per_token: float

    def to_dict(self) -> dict[str, str | int | float]:
        return asdict(self)


@dataclass(frozen=True)
class ModelScores:
    """The scores of one checkpoint on every text, in the order the texts were given."""

    model: Path
    scores: list[TextScore]

    def to_dict(self) -> dict[str, object]:
        return {"model": str(self.model), "scores": [score.to_dict() for score in self.scores]}


@dataclass(frozen=True)
class _Window:
    """Text tokens [start, end) are read; [first_scored, end) are scored."""

    start: int
    first_scored: int
    end: int


def truncate_utf8(text: str, max_bytes: int) -> str:
    """Keep at most max_bytes UTF-8 bytes, cutting before a character rather than inside it."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def plan_windows(n_tokens: int, span: int, stride: int, first_scored: int) -> list[_Window]:
    """Windows of at most span text tokens that together score tokens first_scored.. once."""
    windows = [_Window(0, first_scored, min(span, n_tokens))]
    while windows[-1].end < n_tokens:
        start = windows[-1].start + stride
        windows.append(_Window(start, windows[-1].end, min(start + span, n_tokens)))
    return windows


def score_text(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, *, label: str = "",
               context: int = 512, stride: int | None = None, batch_size: int = 8,
               max_bytes: int | None = None, device: torch.device | None = None,
               progress: Tick | None = None) -> TextScore:
    """Score text by the module's rules; device moves the model, default: where it is.

    progress, when given, is called after each batch with (tokens scored, tokens to score).
    """
    if max_bytes is not None:
        text = truncate_utf8(text, max_bytes)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    prefix = context_prefix(tokenizer)
    first_scored = 0 if prefix else 1
    n_tokens = len(ids) - first_scored
    if n_tokens < 1:
        raise TokenSurgeonError(f"{label or 'text'}: nothing to score (the text is too short)")
    n_bytes = len(text.encode("utf-8")) - (0 if prefix else _first_token_bytes(tokenizer, text))
    limit = getattr(model.config, "max_position_embeddings", None)
    context = context if limit is None else min(context, limit)  # a short-context model gets shorter windows
    stride = _check_windowing(context, context // 2 if stride is None else stride, batch_size)
    _check_model_fits(model, prefix + ids, label)
    if device is not None:
        model.to(device)
    windows = plan_windows(len(ids), context - len(prefix), stride, first_scored)
    model.eval()
    nats, scored = 0.0, 0
    with torch.inference_mode():
        for begin in range(0, len(windows), batch_size):
            batch = windows[begin:begin + batch_size]
            batch_nats, batch_scored = _score_batch(model, ids, prefix, batch)
            nats, scored = nats + batch_nats, scored + batch_scored
            if progress is not None:
                progress(scored, n_tokens)
    if scored != n_tokens:
        raise AssertionError(f"windowing scored {scored} tokens, expected {n_tokens}")
    bits = nats / math.log(2)
    return TextScore(label, n_bytes, n_tokens, bits, bits / n_bytes, n_bytes / n_tokens)


def context_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """BOS, else EOS, as an unscored first token; empty when the tokenizer has neither."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return [token_id]
    return []


def _first_token_bytes(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """UTF-8 bytes of the characters the first token covers, since it cannot be scored."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)["offset_mapping"]
    return len(text[:offsets[0][1]].encode("utf-8"))


def _check_windowing(context: int, stride: int, batch_size: int) -> int:
    """A stride above context - 1 would skip tokens or score one with no context at all."""
    if context < 2 or not 1 <= stride <= context - 1 or batch_size < 1:
        raise TokenSurgeonError(f"context {context}, stride {stride}, batch size {batch_size}: "
                                "need context >= 2, 1 <= stride < context and batch size >= 1")
    return stride


def _check_model_fits(model: PreTrainedModel, ids: list[int], label: str) -> None:
    """Catch a tokenizer/model mismatch before an opaque index error."""
    rows = model.get_input_embeddings().num_embeddings
    if max(ids) >= rows:
        raise TokenSurgeonError(f"{label or 'text'}: the tokenizer produced id {max(ids)} but the "
                                f"model has only {rows} embedding rows; are they from one checkpoint?")


def _score_batch(model: PreTrainedModel, ids: list[int], prefix: list[int],
                 windows: list[_Window]) -> tuple[float, int]:
    """Total NLL in nats of the batch's scored tokens, and how many were scored."""
    rows = [prefix + ids[window.start:window.end] for window in windows]
    input_ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    device = model.get_input_embeddings().weight.device
    input_ids = input_ids.to(device)
    logits = model(input_ids=input_ids, attention_mask=mask.to(device)).logits
    nats, scored = 0.0, 0
    for i, window in enumerate(windows):
        # Text token j sits at position j - start + len(prefix); the logits one earlier predict it.
        first = window.first_scored - window.start + len(prefix)
        last = window.end - window.start + len(prefix)
        nats += _nll_nats(logits[i, first - 1:last - 1], input_ids[i, first:last])
        scored += last - first
    return nats, scored


def _nll_nats(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed cross-entropy in float32, a chunk of positions at a time to bound memory."""
    total = 0.0
    for begin in range(0, len(targets), _LOSS_CHUNK):
        chunk = logits[begin:begin + _LOSS_CHUNK].float()
        total += F.cross_entropy(chunk, targets[begin:begin + _LOSS_CHUNK], reduction="sum").item()
    return total


def load_for_eval(path: Path, *, device: torch.device, dtype: torch.dtype = torch.float32,
                  trust_remote_code: bool = False, allow_pickle: bool = False
                  ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a checkpoint and its tokenizer, ready to score on device.

    No code from the checkpoint runs unless trust_remote_code (a config naming custom code is refused);
    pickle-only weights are refused unless allow_pickle (transformers then reads them weights-only).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if path.is_dir():
        read_config(path, trust_remote_code=trust_remote_code)
        if any((path / name).exists() for name in PICKLE_NAMES):
            files, fmt = weight_files(path, allow_pickle=allow_pickle)
            if fmt == "pickle":  # through our weights-only reader first: a pickle naming code is one line
                from ..checkpoint.formats.pickle import load_pickle

                for file in files:
                    load_pickle(file)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as exc:
        raise TokenSurgeonError(f"{path}: cannot load model and tokenizer for evaluation: "
                                f"{first_line(exc)}") from exc
    return model.to(device).eval(), tokenizer


def evaluate_models(model_paths: list[Path], texts: dict[str, str], *, device: str = "auto",
                    context: int = 512, stride: int | None = None, batch_size: int = 8,
                    max_bytes: int | None = None, dtype: torch.dtype = torch.float32,
                    progress: Progress | None = None, names: list[str] | None = None,
                    trust_remote_code: bool = False, allow_pickle: bool = False) -> list[ModelScores]:
    """Score every model on every text (label -> text), holding one model in memory at a time.

    progress, when given, is called with ("<name>/<label>", tokens scored, total); names default to the model
    directories' names (a transplant names its staging folder by its output's). trust_remote_code and
    allow_pickle: see load_for_eval.
    """
    target = resolve_device(device)
    results = []
    for path, name in zip(model_paths, names or [Path(p).name for p in model_paths]):
        model, tokenizer = load_for_eval(path, device=target, dtype=dtype, trust_remote_code=trust_remote_code,
                                         allow_pickle=allow_pickle)
        scores = [score_text(model, tokenizer, text, label=label, context=context, stride=stride,
                             batch_size=batch_size, max_bytes=max_bytes,
                             progress=_labelled(progress, f"{name}/{label}"))
                  for label, text in texts.items()]
        results.append(ModelScores(path, scores))
        del model
        _release(target)
    return results


def _labelled(progress: Progress | None, name: str) -> Tick | None:
    """Tell a multi-model progress display which model and text the counts belong to."""
    return None if progress is None else functools.partial(progress, name)


def _release(device: torch.device) -> None:
    """Return a freed model's memory before the next one loads, so two never coexist."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
