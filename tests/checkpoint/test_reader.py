from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import tokensurgeon.checkpoint.reader as checkpoint_module
from tokensurgeon.checkpoint import open_checkpoint, read_embeddings, read_tensor
from tokensurgeon.checkpoint.formats.safetensors import read_header
from tokensurgeon.checkpoint.writer import write_weights
from tokensurgeon.runtime.memory import gathered, release_pages
from conftest import CountingReads
from tokensurgeon.errors import CheckpointError


def resident_mb_of(file: Path) -> float:
    """Resident memory of this process's mappings of one file (/proc/self/smaps), in MB: only that file's
    pages count, so other allocations of the process (or of the machine) cannot move the figure."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                fields = line.split(maxsplit=5)
                inside = len(fields) == 6 and fields[5].strip() == str(file.resolve())
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total / 1024


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
    counter = CountingReads()
    monkeypatch.setattr(checkpoint_module, "read_tensor", counter)
    ckpt = open_checkpoint(tiny_models["untied"])
    embed, head = read_embeddings(ckpt)
    assert counter.names == ["model.embed_tokens.weight", "lm_head.weight"]
    assert len(ckpt.tensors) > 10
    assert embed.shape == head.shape == (49152, 32) and embed.dtype == torch.bfloat16


def test_mapped_tensors_equal_safetensors_and_hand_back_their_pages(tmp_path):
    matrix = torch.randn(16384, 1024)  # 64 MB
    save_file({"other": torch.ones(3, dtype=torch.int64), "embed": matrix.bfloat16(), "big": matrix}, tmp_path / "m.safetensors")
    tensors, _ = read_header(tmp_path / "m.safetensors")
    assert torch.equal(read_tensor(tensors["embed"]), matrix.bfloat16())
    assert torch.equal(read_tensor(tensors["other"]), torch.ones(3, dtype=torch.int64))  # via safetensors
    mapped = read_tensor(tensors["big"])
    before = resident_mb_of(tmp_path / "m.safetensors")
    assert torch.equal(mapped, matrix)  # reads every page
    assert resident_mb_of(tmp_path / "m.safetensors") - before > 0.95 * 64
    release_pages(mapped)
    assert resident_mb_of(tmp_path / "m.safetensors") - before < 0.05 * 64
    assert torch.equal(mapped[-5:], matrix[-5:])  # released pages read back from the file
    release_pages(matrix)  # not a mapping: nothing happens
    assert torch.equal(mapped[:3], matrix[:3])


def test_gathered_reads_rows_in_row_order_with_repeats():
    matrix = torch.arange(50 * 3, dtype=torch.float32).view(50, 3)
    ids = [49, 0, 7, 7, 31, 12, 49, 3]
    out = torch.empty(len(ids), 3)
    windows = []
    for positions, rows in gathered(matrix, ids, rows_per_block=8):
        out[positions] = rows
        windows.append(sorted(ids[p] // 8 for p in positions.tolist()))
    assert torch.equal(out, matrix[ids])
    assert [w[0] for w in windows] == sorted({i // 8 for i in ids}) and all(len(set(w)) == 1 for w in windows)
    assert list(gathered(matrix, [])) == []


def test_write_replaces_only_what_is_asked(tiny_models, tmp_path, monkeypatch):
    source = tiny_models["untied"]
    ckpt = open_checkpoint(source)
    embed, head = read_embeddings(ckpt)
    new_embed = torch.cat([embed, embed[:7] * 2])  # grow the vocabulary
    counter = CountingReads()
    monkeypatch.setattr(checkpoint_module, "read_tensor", counter)
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


def test_nonfinite_summary_counts_what_a_finite_sum_would_hide_or_invent():
    """The per-block sum only decides which blocks are checked value by value: an overflowing sum of finite
    values is no finding, and +inf beside -inf (a NaN sum) is still two values."""
    nonfinite_summary = checkpoint_module.nonfinite_summary
    huge = torch.full((6, 4), 3e38, dtype=torch.bfloat16)  # finite values whose float32 sum is inf
    assert nonfinite_summary(huge, rows_per_block=2) is None
    mixed = torch.zeros(6, 4)
    mixed[3, 0], mixed[3, 1], mixed[5, 2] = float("inf"), float("-inf"), float("nan")
    assert nonfinite_summary(mixed, rows_per_block=2) == (3, 2, 3)
