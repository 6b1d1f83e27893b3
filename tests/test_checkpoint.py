from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import tokensurgeon.checkpoint as checkpoint_module
from tokensurgeon.checkpoint import open_checkpoint, read_embeddings, read_header, write_weights
from tokensurgeon.errors import CheckpointError


class CountingSafeOpen:
    """Wraps safetensors.safe_open to count the tensors actually materialised."""

    def __init__(self):
        self.names: list[str] = []

    def __call__(self, *args, **kwargs):
        handle = safe_open(*args, **kwargs)
        names = self.names

        class Handle:
            def __enter__(self):
                handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def get_tensor(self, name):
                names.append(name)
                return handle.get_tensor(name)

        return Handle()


def test_tied_single_file(tiny_models):
    ckpt = open_checkpoint(tiny_models["tied"])
    assert ckpt.tied and ckpt.output_name is None
    assert ckpt.input_name == "model.embed_tokens.weight"
    assert len(ckpt.files) == 1 and ckpt.vocab_rows == 49152 and ckpt.hidden_size == 32


def test_untied_sharded(tiny_models):
    ckpt = open_checkpoint(tiny_models["untied"])
    assert not ckpt.tied and ckpt.output_name == "lm_head.weight"
    assert len(ckpt.files) > 1


def test_read_embeddings_reads_only_embeddings(tiny_models, monkeypatch):
    counter = CountingSafeOpen()
    monkeypatch.setattr(checkpoint_module, "safe_open", counter)
    ckpt = open_checkpoint(tiny_models["untied"])
    embed, head = read_embeddings(ckpt)
    assert counter.names == ["model.embed_tokens.weight", "lm_head.weight"]
    assert len(ckpt.tensors) > 10
    assert embed.shape == head.shape == (49152, 32) and embed.dtype == torch.bfloat16


def test_write_replaces_only_what_is_asked(tiny_models, tmp_path, monkeypatch):
    source = tiny_models["untied"]
    ckpt = open_checkpoint(source)
    embed, head = read_embeddings(ckpt)
    new_embed = torch.cat([embed, embed[:7] * 2])  # grow the vocabulary
    counter = CountingSafeOpen()
    monkeypatch.setattr(checkpoint_module, "safe_open", counter)
    (tmp_path / "config.json").write_text((source / "config.json").read_text())
    write_weights(ckpt, tmp_path, {ckpt.input_name: new_embed})
    assert counter.names == []  # nothing deserialised: other tensors are copied as raw bytes
    unchanged = [f for f in ckpt.files if not any(t.file == f and t.name == ckpt.input_name
                                                   for t in ckpt.tensors.values())]
    for file in unchanged:
        assert (tmp_path / file.name).read_bytes() == file.read_bytes()
    tensors = {}
    for file in ckpt.files:
        with safe_open(tmp_path / file.name, framework="pt") as handle:
            tensors |= {name: handle.get_tensor(name) for name in handle.keys()}
    assert torch.equal(tensors[ckpt.input_name], new_embed)
    assert torch.equal(tensors["lm_head.weight"], head)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    original = json.loads((source / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == original["metadata"]["total_size"] + 7 * 32 * 2


def test_written_checkpoint_loads_in_transformers(tiny_models, tmp_path):
    ckpt = open_checkpoint(tiny_models["tied"])
    embed, _ = read_embeddings(ckpt)
    (tmp_path / "config.json").write_text((tiny_models["tied"] / "config.json").read_text())
    write_weights(ckpt, tmp_path, {ckpt.input_name: embed.flip(0).contiguous()})
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    original = AutoModelForCausalLM.from_pretrained(tiny_models["tied"])
    assert torch.equal(model.get_input_embeddings().weight, embed.flip(0))
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, original.model.layers[1].mlp.down_proj.weight)


def test_corrupt_and_truncated_headers(tiny_models, fresh_copy):
    broken = fresh_copy(tiny_models["tied"])
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        open_checkpoint(broken)
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_header(weights)


def test_missing_pieces(tiny_models, fresh_copy, tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        open_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        open_checkpoint(tmp_path)
    sharded = fresh_copy(tiny_models["untied"], "sharded")
    next(sharded.glob("model-00001-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="names shard .* which does not exist"):
        open_checkpoint(sharded)
    pickled = fresh_copy(tiny_models["tied"], "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        open_checkpoint(pickled)
