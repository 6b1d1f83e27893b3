"""Trained hypernetworks on disk: a directory of safetensors weights and hypernet.json, written by
`hypernet train` or kept in the cache for `transplant --method hypernet`, refused for another base."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ...config import HypernetConfig
from ...errors import MethodError
from ...runtime.cache import cache_dir, store
from ...runtime.progress import Progress, first_line
from ...vocab import Vocabulary
from .hypernetwork import CONFIG, FORMAT, WEIGHTS, Hypernet, TrainedHypernet, fingerprint, train_hypernet


def save_hypernet(trained: TrainedHypernet, out: Path) -> None:
    """safetensors weights + hypernet.json into ``out`` (an existing directory: callers stage it)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in trained.net.state_dict().items()}
    save_file(state, str(Path(out) / WEIGHTS), metadata={"format": FORMAT})
    (Path(out) / CONFIG).write_text(json.dumps(trained.record, indent=2) + "\n")


def load_hypernet(path: Path, matrices: Sequence[torch.Tensor]) -> TrainedHypernet:
    """Load a saved network for these base matrices; another base (other fingerprint) is refused."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise MethodError(f"{path}: not a hypernetwork directory (expected {CONFIG} and {WEIGHTS}; "
                          "make one with `tokensurgeon hypernet train`)")
    try:
        record = json.loads((path / CONFIG).read_text())
        arch = record["architecture"]
        base = record["base"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MethodError(f"{path / CONFIG}: unreadable hypernetwork record ({exc})") from exc
    if record.get("format") != FORMAT:
        raise MethodError(f"{path / CONFIG}: not a {FORMAT} file")
    if base != fingerprint(matrices):
        raise MethodError(f"{path}: this hypernetwork was trained for another base model (embedding fingerprint "
                          f"{base['sha256'][0][:12]}..., this base has {fingerprint(matrices)['sha256'][0][:12]}...); "
                          "train one for this base with `tokensurgeon hypernet train`")
    net = Hypernet(arch["hidden"], arch["matrices"], arch["width"], arch["layers"], arch["heads"], arch["max_pieces"])
    try:
        net.load_state_dict(load_file(str(path / WEIGHTS)))
    except (RuntimeError, OSError) as exc:
        raise MethodError(f"{path / WEIGHTS}: weights do not match {CONFIG}: {first_line(exc)}") from exc
    return TrainedHypernet(net.to(matrices[0].device).eval(), record)


def cache_key(matrices: Sequence[torch.Tensor], config: HypernetConfig, corpus: Sequence[Path],
              device: torch.device) -> str:
    """Same base, options, corpus bytes and device kind: same network, so the cached one is reused."""
    digest = hashlib.sha256(json.dumps([fingerprint(matrices), dataclasses.asdict(config), device.type],
                                       sort_keys=True).encode())
    for path in corpus:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()[:24]


def cached_or_trained(matrices: Sequence[torch.Tensor], vocab: Vocabulary, config: HypernetConfig, *,
                      base_path: Path | None, tokenizer: Any, corpus: Sequence[Path],
                      progress: Progress | None = None) -> tuple[TrainedHypernet, Path, str | None]:
    """The cached network for these inputs, or a new one trained and cached (written atomically).

    Returns the network, its cache directory, and a warning when the cache could not be written (a
    read-only cache costs a retrain next time, nothing else).
    """
    target = cache_dir("hypernet") / cache_key(matrices, config, corpus, matrices[0].device)
    if (target / CONFIG).is_file():
        return load_hypernet(target, matrices), target, None
    trained = train_hypernet(matrices, vocab, config, base_path=base_path, tokenizer=tokenizer, corpus=corpus,
                             progress=progress)
    return trained, target, store(target, lambda staging: save_hypernet(trained, staging))


