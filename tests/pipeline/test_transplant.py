from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import TOKENIZERS
from reference_tokens import reference_overlap
from tokensurgeon.checkpoint import open_checkpoint, read_embeddings
from tokensurgeon.config import TransplantConfig
from tokensurgeon.errors import MethodError, TokenSurgeonError
from tokensurgeon.checkpoint.model_config import patch_config
from tokensurgeon.pipeline.transplant import transplant


def weights(path):
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors |= load_file(file)
    return tensors


def provenance(path):
    # "\n" only: token strings may hold U+2028 or U+0085, which splitlines() would split on too
    return [json.loads(line) for line in (path / "provenance.jsonl").read_text().split("\n") if line]


def test_identity_transplant_is_bit_exact(tiny_models, tmp_path):
    base = tiny_models["tied"]
    report = transplant(TransplantConfig(base=base, donor=base, out=tmp_path / "out"))
    assert report.counts["computed"] == 0
    before, after = weights(base), weights(tmp_path / "out")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (base / "model.safetensors").read_bytes()


def test_untied_sharded_onto_llama3(tiny_models, tmp_path):
    base, out = tiny_models["untied"], tmp_path / "out"
    report = transplant(TransplantConfig(base=base, donor=TOKENIZERS / "llama3", out=out))
    assert report.output["rows"] == 128_257
    assert report.counts["shared_tokens"] == reference_overlap(base, TOKENIZERS / "llama3").shared
    base_embed, base_head = read_embeddings(open_checkpoint(base))
    patched = open_checkpoint(out)
    embed, head = read_embeddings(patched)
    assert embed.shape == head.shape == (128_257, 32)
    rows = provenance(out)
    copies = [row for row in rows if row["path"] == "copy"]
    new = [row for row in rows if row["match"] == "new" and row["path"] == "subword-mean"]
    for row in copies[:2000]:  # shared tokens keep their base rows bit-exactly, input and output alike
        assert torch.equal(embed[row["id"]], base_embed[row["sources"][0]])
        assert torch.equal(head[row["id"]], base_head[row["sources"][0]])
    row = new[123]  # new rows follow the base head, not a copy of the input rows
    expected_head = base_head[row["sources"]].float().mean(0).to(torch.bfloat16)
    assert torch.equal(head[row["id"]], expected_head)
    assert not torch.equal(head[row["id"]], embed[row["id"]])
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 128_257 and config["bos_token_id"] == 128_000 and config["eos_token_id"] == 128_001
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 128_001
    assert json.loads((out / "tokenizer.json").read_text()) == json.loads((TOKENIZERS / "llama3" / "tokenizer.json").read_text())
    assert any("number schemes differ" in warning for warning in report.warnings)


def test_tied_stays_tied(tiny_models, tmp_path):
    out = tmp_path / "out"
    transplant(TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / "gpt2", out=out))
    patched = open_checkpoint(out)
    assert patched.tied and "lm_head.weight" not in patched.tensors
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True


def test_same_seed_same_bytes(tiny_models, tmp_path):
    outs = []
    for name in ("a", "b"):
        outs.append(tmp_path / name)
        transplant(TransplantConfig(base=tiny_models["untied"], donor=TOKENIZERS / "mistral-v1", out=outs[-1],
                                    method="hewitt", method_options={"scale": 1e-3}, seed=7))
    files = sorted(p.name for p in outs[0].glob("*.safetensors"))
    assert files and all((outs[0] / f).read_bytes() == (outs[1] / f).read_bytes() for f in files)


def test_padding_rows_and_donor_model_rows(tiny_models, tmp_path):
    donor = tiny_models["donor_llama2"]  # a model whose embedding has 64 rows past its tokenizer
    out = tmp_path / "out"
    report = transplant(TransplantConfig(base=tiny_models["tied"], donor=donor, out=out, pad_to_multiple=128))
    assert report.output["rows"] == 32_000 + 64 + 64 and report.output["rows"] % 128 == 0
    assert report.counts["padding"] == 128
    assert report.donor["is_model"]
    embed, _ = read_embeddings(open_checkpoint(out))
    assert torch.equal(embed[-1], embed[-128])  # every padding row is the same mean row


def test_method_needing_donor_model_is_refused_for_tokenizer(tiny_models, tmp_path, monkeypatch):
    from tokensurgeon.methods import INIT_METHODS, zero

    class NeedsDonor(zero.ZeroMethod):
        name = "needs-donor"
        needs_donor_embeddings = True

    monkeypatch.setitem(INIT_METHODS, "needs-donor", NeedsDonor)
    with pytest.raises(MethodError, match="needs the donor model's embeddings"):
        transplant(TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / "gpt2", out=tmp_path / "o",
                                    method="needs-donor"))
    assert not (tmp_path / "o").exists()


def test_methods_that_may_use_a_donor_model_get_its_embeddings(tiny_models, tmp_path):
    """focus needs --corpus or a donor model: with a model as donor and no corpus it runs from the model's space."""
    out = tmp_path / "out"
    transplant(TransplantConfig(base=tiny_models["untied"], donor=tiny_models["donor_llama2"], out=out,
                                method="focus"))
    paths = {row["path"] for row in provenance(out)}
    assert "focus" in paths
    with pytest.raises(MethodError, match="--corpus"):
        transplant(TransplantConfig(base=tiny_models["untied"], donor=TOKENIZERS / "llama2", out=tmp_path / "o",
                                    method="focus"))


def test_refuses_non_empty_output_and_output_inside_input(tiny_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(TokenSurgeonError, match="not empty"):
        transplant(TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / "gpt2", out=out))
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(TokenSurgeonError, match="inside input"):
        transplant(TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / "gpt2",
                                    out=tiny_models["tied"] / "sub"))
    transplant(TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / "gpt2", out=out, force=True))
    assert not (out / "keep.txt").exists() and (out / "report.json").is_file()


def reference_bits_per_byte(model_dir, text: str) -> float:
    """Bits per byte by hand, for a text that fits one window: BOS as unscored context, then every text
    token scored once by transformers' own mean cross-entropy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[bos] + tokenizer(text, add_special_tokens=False)["input_ids"]])
    assert ids.shape[1] <= 512  # one evaluation window (EvalConfig.context)
    with torch.no_grad():
        mean_nats = model(input_ids=ids, labels=ids).loss.item()
    return mean_nats * (ids.shape[1] - 1) / math.log(2) / len(text.encode("utf-8"))


def test_identity_keeps_bits_per_byte_and_report_has_evaluation(tiny_models, tmp_path):
    from conftest import CORPORA

    out = tmp_path / "out"
    report = transplant(TransplantConfig(base=tiny_models["untied"], donor=tiny_models["untied"], out=out,
                                         eval_texts=(CORPORA / "udhr" / "spa.txt",), eval_max_bytes=800))
    (row,) = report.evaluation
    assert row.text == "spa.txt" and row.bytes <= 800
    text = (CORPORA / "udhr" / "spa.txt").read_bytes()[:800].decode("utf-8", errors="ignore")
    assert row.bytes == len(text.encode("utf-8"))
    assert row.base_bpb == pytest.approx(reference_bits_per_byte(tiny_models["untied"], text), rel=1e-4)
    assert row.patched_bpb == pytest.approx(reference_bits_per_byte(out, text), rel=1e-4)
    assert row.ratio == pytest.approx(1.0, abs=1e-6)  # the identity transplant changes no row
    assert row.new_token_share == 0.0
    assert "| spa.txt |" in (out / "report.md").read_text()


def test_donor_tokenizer_prepends_bos_when_the_base_did(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    base = tiny_models["donor_llama2"]  # Llama-2's tokenizer prepends <s>; GPT-2's adds nothing
    assert AutoTokenizer.from_pretrained(base)("a")["input_ids"][0] == 1
    report = transplant(TransplantConfig(base=base, donor=TOKENIZERS / "gpt2", out=tmp_path / "out"))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tokenizer("Hello world")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 50256 and tokenizer.decode(ids[1:]) == "Hello world"
    assert any("now prepends" in note for note in report.warnings)
    unchanged = transplant(TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / "gpt2", out=tmp_path / "o2"))
    assert AutoTokenizer.from_pretrained(tmp_path / "o2")("Hello")["input_ids"] == [15496]  # SmolLM2 adds no BOS
    assert not any("now prepends" in note for note in unchanged.warnings)


def test_config_ids_follow_the_donor_and_unk_only_where_the_base_has_one():
    ids = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "unk_token_id": 3}
    with_unk = patch_config({"vocab_size": 10, "unk_token_id": 0, "text_config": {"eos_token_id": 7}}, 20, ids)
    assert with_unk["unk_token_id"] == 3 and with_unk["bos_token_id"] == 2 and with_unk["vocab_size"] == 20
    assert with_unk["text_config"] == {"eos_token_id": 1}
    assert "unk_token_id" not in patch_config({"vocab_size": 10}, 20, ids)


def test_recompute_undertrained_changes_only_copies_of_barely_trained_rows(tiny_models, tmp_path):
    """Llama-2 base (<0xNN> rows) <- SmolLM2 tokenizer: with the option, exactly the rows copied from byte-fallback
    rows are computed instead; every other row is byte-identical. The CLI flag reaches the config."""
    from typer.testing import CliRunner

    from tokensurgeon.cli import app
    from tokensurgeon.vocab import build_vocabulary, load_tokenizer

    base, donor = tiny_models["donor_llama2"], tiny_models["tied"]
    transplant(TransplantConfig(base=base, donor=donor, out=tmp_path / "copied"))
    result = CliRunner().invoke(app, ["transplant", str(base), str(donor), "-o", str(tmp_path / "computed"),
                                      "--recompute-undertrained"])
    assert result.exit_code == 0, result.output
    byte_fallback = build_vocabulary(load_tokenizer(base)).byte_fallback
    expected = {row["id"] for row in provenance(tmp_path / "copied")
                if row["path"] == "copy" and set(row["sources"]) & byte_fallback}
    assert len(expected) > 64
    a, b = weights(tmp_path / "copied"), weights(tmp_path / "computed")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        changed = set((a[name] != b[name]).any(dim=1).nonzero().flatten().tolist())
        assert changed and changed <= expected
    computed = {row["id"]: row["path"] for row in provenance(tmp_path / "computed")}
    assert all(computed[i] != "copy" for i in expected)


def test_a_tied_head_saved_twice_gets_the_new_rows_too(tiny_models, fresh_copy, tmp_path):
    """Some tied checkpoints also store lm_head.weight (a copy of the embedding): it was copied on the old
    vocabulary and the run refused; both copies must take the new rows and stay equal."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    base = fresh_copy(tiny_models["tied"], "base")
    tensors = load_file(base / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    checkpoint = open_checkpoint(base)
    assert checkpoint.tied and checkpoint.output_name == "lm_head.weight"
    out = tmp_path / "out"
    transplant(TransplantConfig(base=base, donor=TOKENIZERS / "mistral-v1", out=out))
    written = load_file(out / "model.safetensors")
    assert written["lm_head.weight"].shape == (32_000, 32) and torch.equal(written["lm_head.weight"],
                                                                            written["model.embed_tokens.weight"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("donor", ["phi3", "qwen2"])
def test_the_donors_chat_template_is_copied(tiny_models, tmp_path, donor):
    """The output renders a conversation exactly as the donor tokenizer itself does (transformers as referee)."""
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    transplant(TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / donor, out=out, method="subword-mean"))
    turns = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
             {"role": "user", "content": "And of Spain?"}]
    expected = AutoTokenizer.from_pretrained(TOKENIZERS / donor).apply_chat_template(
        turns, tokenize=False, add_generation_prompt=True)
    base = AutoTokenizer.from_pretrained(tiny_models["tied"]).apply_chat_template(
        turns, tokenize=False, add_generation_prompt=True)
    assert expected != base  # the base has a template of its own (SmolLM2's ChatML with a system prompt)
    patched = AutoTokenizer.from_pretrained(out)
    assert patched.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) == expected
