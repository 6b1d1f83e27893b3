"""Integration tests on the real SmolLM2-135M and Gemma3-270M checkpoints (built once by zoo.py)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import tokensurgeon.checkpoint.reader as checkpoint_module
from conftest import CORPORA, CountingReads, TOKENIZERS
from reference_tokens import reference_overlap
from tokensurgeon.checkpoint import open_checkpoint, read_embeddings
from tokensurgeon.config import TransplantConfig
from tokensurgeon.pipeline.transplant import transplant
from tokensurgeon.zoo import ensure_model

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def smollm2():
    return ensure_model("smollm2-135m")


@pytest.fixture(scope="module")
def gemma3():
    return ensure_model("gemma3-270m")


@pytest.mark.parametrize("name, rows, hidden", [("smollm2-135m", 49152, 576), ("gemma3-270m", 262144, 640)])
def test_reading_embeddings_reads_only_the_embedding(name, rows, hidden, monkeypatch):
    counter = CountingReads()
    monkeypatch.setattr(checkpoint_module, "read_tensor", counter)
    ckpt = open_checkpoint(ensure_model(name))
    embed, head = read_embeddings(ckpt)
    assert ckpt.tied and head is None
    assert counter.names == [ckpt.input_name]  # one tensor of the whole model
    assert embed.shape == (rows, hidden) and len(ckpt.tensors) > 200


def test_smollm2_llama3_subword_mean_loads_and_generates(smollm2, tmp_path):
    out = tmp_path / "smol-llama3"
    report = transplant(TransplantConfig(base=smollm2, donor=TOKENIZERS / "llama3", out=out,
                                         eval_texts=(CORPORA / "lee_news.txt",), eval_max_bytes=3000))
    assert report.counts["shared_tokens"] == reference_overlap(smollm2, TOKENIZERS / "llama3").shared
    (row,) = report.evaluation
    assert 0.5 < row.base_bpb < 1.5  # a real model on English news
    assert row.ratio < 1.6  # subword-mean keeps most of the quality on English
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == model.get_input_embeddings().weight.shape[0] == 128_257
    # the prompt is spelled in shared tokens, whose rows are the base's bit for bit: the greedy continuation is
    # the base model's own (which knows the answer), computed here with the untouched base and its tokenizer
    base_tokenizer, base_model = AutoTokenizer.from_pretrained(smollm2), AutoModelForCausalLM.from_pretrained(smollm2)
    expected = continuation(base_model, base_tokenizer, "The capital of France is")
    assert "Paris" in expected
    assert continuation(model, tokenizer, "The capital of France is") == expected


def continuation(model, tokenizer, prompt: str) -> str:
    """The text greedy decoding adds after the prompt (special tokens left out)."""
    ids = tokenizer(prompt, return_tensors="pt")
    new = model.generate(**ids, max_new_tokens=8, do_sample=False)[0, ids["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True)


def test_gemma3_from_smollm2_model_counts_match_a_hand_count(gemma3, smollm2, tmp_path):
    out = tmp_path / "gemma-smol"
    report = transplant(TransplantConfig(base=gemma3, donor=smollm2, out=out))
    overlap = reference_overlap(gemma3, smollm2)  # by hand from the two tokenizer.json files
    assert (report.counts["shared_tokens"], report.counts["new"]) == (overlap.shared, overlap.new)
    assert report.donor["is_model"]
    config = json.loads((out / "config.json").read_text())
    donor_config = json.loads((smollm2 / "config.json").read_text())
    assert config["vocab_size"] == 49_152 and config["eos_token_id"] == donor_config["eos_token_id"]
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.get_input_embeddings().weight.shape == (49_152, 640)
