"""export: dtype and shard re-writes, embeddings-only patches and their application, the final check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import tokensurgeon.checkpoint.formats.safetensors as safetensors_format
import tokensurgeon.checkpoint.reader as checkpoint_module
from conftest import CountingReads, TOKENIZERS
from tokensurgeon.cli import app
from tokensurgeon.config import ExportConfig, TransplantConfig
from tokensurgeon.vocab.alignment import COPIED
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.jobs.export import PATCH_MANIFEST, export
from tokensurgeon.pipeline.transplant import transplant

runner = CliRunner()


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in a directory."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            tensors |= {name: handle.get_tensor(name).clone() for name in handle.keys()}
    return tensors


def run(source: Path, out: Path, **options):
    return export(ExportConfig(source=source, out=out, **options))


@pytest.fixture(scope="module")
def patched(tiny_models, tmp_path_factory) -> Path:
    """The tiny untied model given the Mistral tokenizer: a real transplant output."""
    out = tmp_path_factory.mktemp("export") / "patched"
    transplant(TransplantConfig(base=tiny_models["untied"], donor=TOKENIZERS / "mistral-v1", out=out))
    return out


def test_dtype_round_trip(tiny_models, tmp_path):
    source = tiny_models["tied"]
    result = run(source, tmp_path / "fp32", dtype="fp32")
    assert result.cast == result.tensors and result.checked == result.tensors
    for file in (tmp_path / "fp32").glob("*.safetensors"):
        assert {info.dtype for info in safetensors_format.read_header(file)[0].values()} == {"F32"}
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["dtype"] == "float32"
    original, wide = tensors_of(source), tensors_of(tmp_path / "fp32")
    assert all(torch.equal(wide[name], tensor.float()) for name, tensor in original.items())
    run(tmp_path / "fp32", tmp_path / "back", dtype="bf16")  # bf16 -> fp32 -> bf16 is exact
    back = tensors_of(tmp_path / "back")
    assert all(back[name].dtype == torch.bfloat16 and torch.equal(back[name], t) for name, t in original.items())
    assert json.loads((tmp_path / "back" / "config.json").read_text())["dtype"] == "bfloat16"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        if (source / name).exists():
            assert (tmp_path / "back" / name).read_bytes() == (source / name).read_bytes()


def test_cast_in_small_blocks(tiny_models, tmp_path, monkeypatch):
    """Casting streams in blocks: a block size that splits tensors anywhere changes nothing."""
    monkeypatch.setattr(safetensors_format, "COPY_CHUNK", 1000)
    run(tiny_models["tied"], tmp_path / "fp16", dtype="fp16")
    original, half = tensors_of(tiny_models["tied"]), tensors_of(tmp_path / "fp16")
    assert all(torch.equal(half[name], tensor.to(torch.float16)) for name, tensor in original.items())


def test_small_shards_give_an_index_transformers_loads(patched, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sharded"
    result = run(patched, out, dtype="fp32", max_shard_size="1MB")
    names = sorted(p.name for p in out.glob("*.safetensors"))
    assert result.shards == len(names) > 2
    assert names == [f"model-{i:05d}-of-{len(names):05d}.safetensors" for i in range(1, len(names) + 1)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert list(index["weight_map"]) == sorted(index["weight_map"])
    assert set(index["weight_map"].values()) == set(names)
    sizes = {name: sum(i.end - i.start for i in safetensors_format.read_header(out / name)[0].values())
             for name in names}
    assert index["metadata"]["total_size"] == sum(sizes.values()) == result.total_size
    for name, size in sizes.items():  # a shard passes the limit only when it is one large tensor
        assert size <= 1_000_000 or len(safetensors_format.read_header(out / name)[0]) == 1
    model = AutoModelForCausalLM.from_pretrained(out)
    reference = tensors_of(patched)
    for name, param in model.state_dict().items():
        if name in reference:
            assert param.dtype == torch.float32 and torch.equal(param, reference[name].float())


def test_a_tensor_over_max_shard_size_is_warned_and_the_report_kept(patched, tmp_path):
    """Tensors are never split: one larger than --max-shard-size gets a shard past the limit, said in a warning."""
    result = run(patched, tmp_path / "small", max_shard_size="1MB")
    big = [w for w in result.warnings if "more than --max-shard-size (1.0 MB)" in w]
    assert any(w.startswith("model.embed_tokens.weight is ") for w in big) and len(big) == 2  # embed and head
    assert run(patched, tmp_path / "large", max_shard_size="5GB").warnings == []
    for out in (tmp_path / "small", tmp_path / "large"):
        assert (out / "report.html").read_bytes() == (patched / "report.html").read_bytes()


def test_unchanged_shards_are_copied_byte_for_byte(tiny_models, tmp_path):
    source = tiny_models["untied"]
    result = run(source, tmp_path / "copy")
    assert {record["how"] for record in result.files} == {"copied"} and result.cast == 0
    for file in source.glob("*.safetensors"):
        assert (tmp_path / "copy" / file.name).read_bytes() == file.read_bytes()
    linked = run(source, tmp_path / "linked", link=True)
    assert {record["how"] for record in linked.files} == {"linked"}
    for file in source.glob("*.safetensors"):
        assert (tmp_path / "linked" / file.name).stat().st_ino == file.stat().st_ino
    assert linked.bytes_written < linked.out_bytes


def test_export_deserialises_nothing(patched, tmp_path, monkeypatch):
    """Raw byte ranges and casts from the file: no tensor is ever loaded through safetensors."""
    counter = CountingReads()
    monkeypatch.setattr(checkpoint_module, "read_tensor", counter)
    run(patched, tmp_path / "fp16", dtype="fp16", max_shard_size="1MB")
    run(patched, tmp_path / "patch", embeddings_only=True)
    assert counter.names == []


def test_patch_then_apply_equals_the_full_export(patched, tiny_models, tmp_path):
    patch = tmp_path / "patch"
    result = run(patched, patch, embeddings_only=True)
    manifest = json.loads((patch / PATCH_MANIFEST).read_text())
    assert set(manifest["tensors"]) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert not (patch / "model.safetensors").exists() and not (patch / "model.safetensors.index.json").exists()
    assert result.tensors == 2 and set(tensors_of(patch)) == set(manifest["tensors"])
    assert (patch / "tokenizer.json").is_file() and (patch / "config.json").is_file()

    applied, full = tmp_path / "applied", tmp_path / "full"
    run(patch, applied, apply_to=tiny_models["untied"])
    run(patched, full)
    want, got = tensors_of(full), tensors_of(applied)
    assert want.keys() == got.keys() and all(torch.equal(want[n], got[n]) for n in want)
    assert json.loads((applied / "config.json").read_text()) == json.loads((patched / "config.json").read_text())
    assert (applied / "tokenizer.json").read_bytes() == (patched / "tokenizer.json").read_bytes()
    # the base's shards without embeddings come through whole
    untouched = [f for f in tiny_models["untied"].glob("*.safetensors")
                 if not {"model.embed_tokens.weight", "lm_head.weight"} & set(safetensors_format.read_header(f)[0])]
    assert untouched and all(any((applied / name).read_bytes() == f.read_bytes()
                                 for name in (p.name for p in applied.glob("*.safetensors"))) for f in untouched)

    half = run(patch, tmp_path / "applied-fp16", apply_to=tiny_models["untied"], dtype="fp16")
    assert half.cast == half.tensors
    assert all(t.dtype == torch.float16 for t in tensors_of(tmp_path / "applied-fp16").values())


def test_mismatched_patches_are_refused(patched, tiny_models, tmp_path, fresh_copy):
    patch = tmp_path / "patch"
    run(patched, patch, embeddings_only=True)
    with pytest.raises(TokenSurgeonError, match="output head"):
        run(patch, tmp_path / "o1", apply_to=tiny_models["tied"])
    with pytest.raises(TokenSurgeonError, match="different weights"):  # same layout, other weights
        run(patch, tmp_path / "o2", apply_to=tiny_models["donor_llama2"])
    manifest_file = fresh_copy(patch, "edited") / PATCH_MANIFEST
    manifest = json.loads(manifest_file.read_text())
    manifest["base"]["tensors"]["model.norm.weight"] = ["BF16", [64]]
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(TokenSurgeonError, match="other tensors differ: model.norm.weight"):
        run(manifest_file.parent, tmp_path / "o3", apply_to=tiny_models["untied"])
    assert not any(p.name.startswith(("o1", "o2", "o3", ".o")) for p in tmp_path.iterdir())


def test_check_refuses_a_config_that_disagrees_with_the_embedding(tiny_models, tmp_path, fresh_copy):
    source = fresh_copy(tiny_models["tied"])
    config = json.loads((source / "config.json").read_text())
    config["vocab_size"] += 1
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(TokenSurgeonError, match="vocab_size"):
        run(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_exit_codes(tiny_models, tmp_path):
    source, out = str(tiny_models["tied"]), str(tmp_path / "out")
    ok = runner.invoke(app, ["export", source, "-o", out, "--dtype", "fp16", "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["mode"] == "full" and data["dtype"] == "fp16" and data["checked"] == data["tensors"]
    table = runner.invoke(app, ["export", source, "-o", str(tmp_path / "table")])
    words = " ".join(table.output.split())  # rich wraps at the terminal width
    assert table.exit_code == 0 and "model.safetensors" in words and "check passed" in words
    refusals = [
        ["export", source, "-o", out],  # not empty, no --force
        ["export", source, "-o", str(tmp_path / "a"), "--dtype", "int8"],
        ["export", source, "-o", str(tmp_path / "b"), "--max-shard-size", "lots"],
        ["export", source, "-o", str(tmp_path / "c"), "--embeddings-only", "--apply-to", source],
        ["export", source, "-o", str(tmp_path / "d"), "--apply-to", source],  # not a patch
        ["export", str(tmp_path / "missing"), "-o", str(tmp_path / "e")],
    ]
    for args in refusals:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and "Traceback" not in result.output
    patch = tmp_path / "patch"
    assert runner.invoke(app, ["export", source, "-o", str(patch), "--embeddings-only"]).exit_code == 0
    as_model = runner.invoke(app, ["export", str(patch), "-o", str(tmp_path / "f")])
    assert as_model.exit_code == 2 and "--apply-to" in as_model.output
    forced = runner.invoke(app, ["export", source, "-o", out, "--force", "--json"])
    assert forced.exit_code == 0


def assemble_matrix(base_matrix: torch.Tensor, pair, new_rows: torch.Tensor,
                    pad_row: torch.Tensor) -> torch.Tensor:
    """(n_rows, d) in the base dtype: copied rows bit-exact, new rows computed, padding rows the mean."""
    alignment = pair.alignment
    out = torch.empty(alignment.n_rows, base_matrix.shape[1], dtype=base_matrix.dtype)
    copied = [i for i, kind in enumerate(alignment.match) if kind in COPIED]
    out[copied] = base_matrix[[alignment.source[i] for i in copied]]
    if alignment.new_ids:
        out[alignment.new_ids] = new_rows.to(device="cpu", dtype=base_matrix.dtype)
    padding = [i for i, kind in enumerate(alignment.match) if kind == "padding"]
    out[padding] = pad_row.to(device="cpu", dtype=base_matrix.dtype)
    return out


def test_assembled_matrix_rows_equal_assemble_matrix(tiny_models):
    """transplant writes the patched matrix block by block; the rows are assemble_matrix's, bit for bit."""
    from tokensurgeon.checkpoint import open_checkpoint, read_embeddings
    from tokensurgeon.vocab.pair import load_pair
    from tokensurgeon.pipeline.assemble import AssembledMatrix
    from tokensurgeon.runtime.memory import tensor_sha256

    base = open_checkpoint(tiny_models["untied"])
    embed, _ = read_embeddings(base)
    pair = load_pair(tiny_models["untied"], TOKENIZERS / "mistral-v1", n_rows=32_064)  # with padding rows
    new_rows = torch.randn(len(pair.alignment.new_ids), embed.shape[1])
    pad = embed.float().mean(0)
    whole = assemble_matrix(embed, pair, new_rows, pad)
    lazy = AssembledMatrix(embed, pair, new_rows, pad)
    assert lazy.shape == whole.shape and lazy.dtype == whole.dtype
    assert torch.equal(lazy.materialise(), whole) and torch.equal(lazy[100:5000], whole[100:5000])
    assert tensor_sha256(lazy) == tensor_sha256(whole)


def test_assembled_matrix_hashes_the_rows_it_hands_out(tiny_models):
    """sha256() is the whole matrix's hash however its rows were read before: in order (the writer's pass, hashed
    on the way), out of order, in part, or not at all."""
    from tokensurgeon.checkpoint import open_checkpoint, read_embeddings
    from tokensurgeon.pipeline.assemble import AssembledMatrix
    from tokensurgeon.runtime.memory import tensor_bytes, tensor_sha256
    from tokensurgeon.vocab.pair import load_pair

    embed, _ = read_embeddings(open_checkpoint(tiny_models["untied"]))
    pair = load_pair(tiny_models["untied"], TOKENIZERS / "mistral-v1", n_rows=32_064)
    new_rows = torch.randn(len(pair.alignment.new_ids), embed.shape[1])
    expected = tensor_sha256(assemble_matrix(embed, pair, new_rows, embed.float().mean(0)))
    reads = [lambda m: list(tensor_bytes(m, 1000)), lambda m: (m[5:10], m[0:3], m[3:32_064]), lambda m: m[0:7], lambda m: None]
    for read in reads:
        lazy = AssembledMatrix(embed, pair, new_rows, embed.float().mean(0))
        read(lazy)
        assert lazy.sha256() == expected


def test_assembled_matrix_needs_a_pad_row_only_for_padding_rows(tiny_models):
    from tokensurgeon.checkpoint import open_checkpoint, read_embeddings
    from tokensurgeon.pipeline.assemble import AssembledMatrix
    from tokensurgeon.vocab.pair import load_pair

    embed, _ = read_embeddings(open_checkpoint(tiny_models["untied"]))
    exact = load_pair(tiny_models["untied"], TOKENIZERS / "mistral-v1")
    new_rows = torch.randn(len(exact.alignment.new_ids), embed.shape[1])
    assert "padding" not in exact.alignment.match
    assert AssembledMatrix(embed, exact, new_rows, None)[0:10].shape == (10, embed.shape[1])
    with pytest.raises(ValueError, match="pad row"):
        AssembledMatrix(embed, load_pair(tiny_models["untied"], TOKENIZERS / "mistral-v1", n_rows=32_064), new_rows, None)


@pytest.mark.realmodel
def test_patched_smollm2_exported_to_small_bf16_shards_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokensurgeon.zoo import ensure_model

    smollm2 = ensure_model("smollm2-135m")
    patched = tmp_path / "smol-llama3"
    transplant(TransplantConfig(base=smollm2, donor=TOKENIZERS / "llama3", out=patched))
    out = tmp_path / "smol-llama3-bf16"
    result = run(patched, out, dtype="bf16", max_shard_size="100MB")
    assert result.shards >= 3 and (out / "model.safetensors.index.json").is_file()
    patch = tmp_path / "patch"
    run(patched, patch, embeddings_only=True)
    applied = run(patch, tmp_path / "applied", apply_to=smollm2, dtype="bf16", max_shard_size="100MB")
    assert applied.shards == result.shards
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    # plain transformers reading the transplant output as bf16 holds the same numbers: the same greedy tokens
    # (8 new, no early stop), and so does the applied patch; logits stay within bf16 rounding of float32's
    reference = AutoModelForCausalLM.from_pretrained(patched, dtype=torch.bfloat16)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    generated = [m.generate(**ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0]
                 for m in (model, reference, AutoModelForCausalLM.from_pretrained(tmp_path / "applied"))]
    assert generated[0].shape[0] == ids["input_ids"].shape[1] + 8
    assert torch.equal(generated[0], generated[1]) and torch.equal(generated[0], generated[2])
    with torch.no_grad():
        wide = AutoModelForCausalLM.from_pretrained(patched, dtype=torch.float32)(**ids).logits[0]
        narrow = model(**ids).logits[0].float()
    assert torch.nn.functional.cosine_similarity(narrow, wide, dim=-1).min() > 0.99


def test_bf16_matrices_give_the_rows_of_the_float32_path():
    """subword-mean on the stored bf16 matrix (no float32 copy) rounds once to exactly the float32 path's rows."""
    from tokensurgeon.methods.base import mean_rows
    from tokensurgeon.methods._shared.pieces import piece_means

    matrix = torch.randn(5000, 48, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    pieces = [tuple(range(i % 7, i % 7 + i % 4)) for i in range(3000)]  # includes empty lists (fallback)
    fallback = mean_rows(matrix, list(range(5000)))
    assert fallback.dtype == torch.float32
    rows = piece_means(matrix, pieces, fallback, block=97)
    assert rows.dtype == torch.bfloat16
    assert torch.equal(rows, piece_means(matrix.float(), pieces, fallback).to(torch.bfloat16))


def test_dtype_reaches_a_multimodal_text_config(tmp_path):
    """Gemma 3 with vision: the text tower's sub-config carries its own dtype (torch_dtype, as older transformers
    wrote it); a full export and an applied embeddings-only patch both set it, and the model loads in that dtype."""
    from transformers import AutoModelForImageTextToText
    from tiny_archs import ARCHS, build_arch

    source = build_arch(ARCHS["gemma3_vision"], tmp_path / "source", TOKENIZERS)
    config_file = source / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"text_config": json.loads(
        config_file.read_text())["text_config"] | {"torch_dtype": "float32"}}))
    full = tmp_path / "full"
    run(source, full, dtype="bf16")
    patch = tmp_path / "patch"
    run(source, patch, embeddings_only=True)
    applied = tmp_path / "applied"
    run(patch, applied, apply_to=source, dtype="bf16")
    for out in (full, applied):
        config = json.loads((out / "config.json").read_text())
        assert config["dtype"] == config["text_config"]["torch_dtype"] == "bfloat16", out.name
        model = AutoModelForImageTextToText.from_pretrained(out)
        assert model.get_input_embeddings().weight.dtype == torch.bfloat16
        assert model.get_input_embeddings().weight.shape[0] == config["text_config"]["vocab_size"] == 32_003
