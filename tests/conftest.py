"""Shared fixtures: real tokenizers, and tiny random models built around them at test time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOKENSURGEON_SHARED", ROOT.parent / "shared"))
if not (SHARED / "tokenizers").is_dir():  # fail loudly: a missing data set must never turn into skipped tests
    raise RuntimeError(f"shared data not found at {SHARED} (no tokenizers/); set TOKENSURGEON_SHARED to its path")
TOKENIZERS = SHARED / "tokenizers"
CORPORA = SHARED / "corpora"
SMOLLM2_TOKENIZER = ROOT / "fixtures" / "tokenizers" / "smollm2"
SHARED_TOKENIZERS = ("gpt2", "llama2", "llama3", "qwen2", "phi3", "mistral-v1", "deepseek-llm")


def build_tiny_model(out: Path, tokenizer_dir: Path, *, tied: bool, shard_size: str | None = None,
                     extra_rows: int = 0, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Save a 2-layer random Llama with the given real tokenizer as a checkpoint directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer) + extra_rows, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(out, **({"max_shard_size": shard_size} if shard_size else {}))
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny SmolLM2-vocabulary models: tied single-file, untied sharded; and a Llama-2-vocabulary donor model."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "tied": build_tiny_model(root / "tied", SMOLLM2_TOKENIZER, tied=True),
        "untied": build_tiny_model(root / "untied", SMOLLM2_TOKENIZER, tied=False, shard_size="2MB"),
        "donor_llama2": build_tiny_model(root / "donor_llama2", TOKENIZERS / "llama2", tied=False, seed=1,
                                         extra_rows=64),
    }


@pytest.fixture()
def fresh_copy(tmp_path):
    """Copy a directory into tmp_path so a test may damage it."""
    def copy(source: Path, name: str = "copy") -> Path:
        return Path(shutil.copytree(source, tmp_path / name))
    return copy


class CountingReads:
    """Wraps checkpoint.read_tensor, the one place a tensor is materialised, to count the tensors read."""

    def __init__(self):
        import tokensurgeon.checkpoint.reader as checkpoint_module

        self.names: list[str] = []
        self.read = checkpoint_module.read_tensor

    def __call__(self, info):
        self.names.append(info.name)
        return self.read(info)
