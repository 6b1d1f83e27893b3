"""Draft models for speculative decoding: the draft must carry the target's exact vocabulary."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import TOKENIZERS
from tokensurgeon.checkpoint import open_checkpoint
from tokensurgeon.cli import app
from tokensurgeon.config import TransplantConfig
from tokensurgeon.pipeline.draft import DraftError, check_draft_compatible
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.pipeline.transplant import transplant
from tokensurgeon.vocab import load_tokenizer


@pytest.fixture(scope="module")
def draft(tiny_models, tmp_path_factory):
    """The tiny SmolLM2-vocabulary model made a draft for the tiny Llama-2 target (32,000 ids + 64 padding rows),
    through the CLI with DONOR omitted."""
    out = tmp_path_factory.mktemp("draft") / "draft"
    result = CliRunner().invoke(app, ["transplant", str(tiny_models["tied"]), "--as-draft-for",
                                      str(tiny_models["donor_llama2"]), "-o", str(out), "--method", "subword-mean",
                                      "--json"])
    assert result.exit_code == 0, result.output
    return out


def test_draft_has_the_targets_rows_and_special_ids(tiny_models, draft):
    target = tiny_models["donor_llama2"]
    assert open_checkpoint(draft).vocab_rows == open_checkpoint(target).vocab_rows == 32_064  # padding included
    config, target_config = (json.loads((path / "config.json").read_text()) for path in (draft, target))
    for key in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert config.get(key) == target_config.get(key), key
    assert "pad_token_id" not in json.loads((draft / "generation_config.json").read_text())  # the base's pad is gone
    ours, theirs = load_tokenizer(draft), load_tokenizer(target)
    assert ours.get_vocab() == theirs.get_vocab()
    assert ours.all_special_ids == theirs.all_special_ids and ours.unk_token_id == theirs.unk_token_id == 0
    assert check_draft_compatible(target, draft) == []


def test_mismatches_are_listed(tiny_models, draft, fresh_copy):
    found = check_draft_compatible(tiny_models["donor_llama2"], tiny_models["tied"])
    assert "embedding rows: target 32,064, draft 49,152" in found
    assert any(line.startswith("tokenizer vocabularies differ") for line in found)
    broken = fresh_copy(draft)
    generation = json.loads((broken / "generation_config.json").read_text()) | {"eos_token_id": 7}
    (broken / "generation_config.json").write_text(json.dumps(generation))
    assert check_draft_compatible(tiny_models["donor_llama2"], broken) == ["generation config eos_token_id: "
                                                                           "target 2, draft 7"]


def test_identical_tokenizer_files_skip_loading_and_any_change_is_still_found(tiny_models, draft, fresh_copy,
                                                                              monkeypatch):
    """A draft carries the target's tokenizer files as they are, so comparing them needs no tokenizer loaded (~6 s
    for Gemma3's); a changed file sends the check back to comparing loaded tokenizers."""
    import tokensurgeon.pipeline.draft as draft_module

    target = tiny_models["donor_llama2"]
    loads = []
    monkeypatch.setattr(draft_module, "load_tokenizer", lambda path, **kw: loads.append(path) or load_tokenizer(path))
    assert check_draft_compatible(target, draft) == [] and loads == []
    changed = fresh_copy(draft)
    settings = json.loads((changed / "tokenizer_config.json").read_text())
    (changed / "tokenizer_config.json").write_text(json.dumps(settings | {"chat_template": "{{ messages }}"}))
    assert check_draft_compatible(target, changed) == ["chat templates differ"] and len(loads) == 2


def test_pad_to_multiple_that_changes_the_row_count_is_refused(tiny_models, tmp_path):
    target = tiny_models["donor_llama2"]
    with pytest.raises(DraftError, match="32,128 embedding rows but the target .* has 32,064.*--pad-to-multiple 128"):
        transplant(TransplantConfig(base=tiny_models["tied"], donor=target, out=tmp_path / "out",
                                    pad_to_multiple=128, draft_for=target))
    assert not (tmp_path / "out").exists()


def test_target_must_be_the_donor_and_a_model(tiny_models, tmp_path):
    with pytest.raises(TokenSurgeonError, match="the target must also be the donor"):
        TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / "llama2", out=tmp_path / "out",
                         draft_for=tiny_models["donor_llama2"])
    with pytest.raises(DraftError, match="must be a full model directory"):
        transplant(TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / "llama2", out=tmp_path / "out",
                                    draft_for=TOKENIZERS / "llama2"))
    result = CliRunner().invoke(app, ["transplant", str(tiny_models["tied"]), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "missing DONOR" in result.output


def test_a_draft_for_a_multimodal_target_takes_the_ids_under_its_text_config(tmp_path):
    """Gemma 3 with vision keeps vocab_size and special ids in text_config: the draft must read them there."""
    from tiny_archs import ARCHS, build_arch

    target = build_arch(ARCHS["gemma3_vision"], tmp_path / "target", TOKENIZERS)  # llama2 + 3 image tokens
    base = build_arch(ARCHS["mistral"], tmp_path / "base", TOKENIZERS)
    target_text = json.loads((target / "config.json").read_text())["text_config"]
    assert "vocab_size" not in json.loads((target / "config.json").read_text())  # only text_config says it
    out = tmp_path / "draft"
    result = CliRunner().invoke(app, ["transplant", str(base), "--as-draft-for", str(target), "-o", str(out),
                                      "--method", "subword-mean"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == target_text["vocab_size"] == 32_003
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert config[key] == target_text[key], key
    assert open_checkpoint(out).vocab_rows == 32_003
    assert check_draft_compatible(target, out) == []
