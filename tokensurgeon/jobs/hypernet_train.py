"""`tokensurgeon hypernet train`: a hypernetwork trained once for a base model, kept in a directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..checkpoint import open_checkpoint, read_embeddings
from ..config import HypernetConfig
from ..errors import TokenSurgeonError
from ..methods._shared.hypernet_store import save_hypernet
from ..methods._shared.hypernetwork import train_hypernet
from ..runtime.devices import resolve_device
from ..runtime.outdir import atomic_directory, check_output_path
from ..runtime.progress import Progress
from ..vocab import build_vocabulary, load_tokenizer


def train_to_directory(base: Path, out: Path, config: HypernetConfig, *, corpus: Sequence[Path] = (),
                       device: str = "auto", force: bool = False, trust_remote_code: bool = False,
                       progress: Progress | None = None) -> dict[str, Any]:
    """`tokensurgeon hypernet train`: train on BASE's embeddings (and --corpus) and write OUT atomically."""
    target = resolve_device(device)
    check_output_path(out, [base, *corpus], force=force)
    for path in corpus:
        if not Path(path).is_file():
            raise TokenSurgeonError(f"corpus file {path} does not exist")
    checkpoint = open_checkpoint(base, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)
    matrices = [m.float().to(target) for m in read_embeddings(checkpoint) if m is not None]
    trained = train_hypernet(matrices, build_vocabulary(tokenizer), config, base_path=Path(base), tokenizer=tokenizer,
                             corpus=corpus, progress=progress)
    with atomic_directory(out) as staging:
        save_hypernet(trained, staging)
    return {"path": str(out)} | trained.record
