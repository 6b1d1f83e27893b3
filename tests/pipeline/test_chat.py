"""Chat models stay chat models: eos covers the template's end of turn, --chat-template base refuses a template
the donor cannot spell, and the report shows the template and one rendered turn. Real tokenizers throughout."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import TOKENIZERS
from tokensurgeon.cli import app
from tokensurgeon.config import TransplantConfig
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.pipeline.chat import end_of_turn, with_end_of_turn
from tokensurgeon.pipeline.transplant import transplant

QWEN2_ENDOFTEXT, QWEN2_IM_END = 151643, 151645  # the qwen2 tokenizer's ids (tokenizer.json added_tokens)


def _ids(out, key="eos_token_id"):
    return [json.loads((out / name).read_text())[key] for name in ("config.json", "generation_config.json")]


def test_qwen2_donor_stops_at_im_end(tiny_models, tmp_path):
    """SmolLM2 <- qwen2 (ChatML): eos is the donor's <|endoftext|>, the turn ends with <|im_end|>: both stop."""
    from transformers import AutoTokenizer, GenerationConfig

    out = tmp_path / "out"
    report = transplant(TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / "qwen2", out=out, method="mean"))
    assert _ids(out) == [[QWEN2_ENDOFTEXT, QWEN2_IM_END]] * 2
    assert GenerationConfig.from_pretrained(out).eos_token_id == [QWEN2_ENDOFTEXT, QWEN2_IM_END]
    assert AutoTokenizer.from_pretrained(out).convert_ids_to_tokens(QWEN2_IM_END) == "<|im_end|>"
    assert report.chat["template"] == "donor" and report.chat["end_of_turn"] == "<|im_end|>"
    assert "<|im_start|>assistant\nParis.<|im_end|>" in report.chat["rendered"]
    markdown = (out / "report.md").read_text()
    assert "## Chat" in markdown and "template: the donor's" in markdown and "Paris.<|im_end|>" in markdown
    assert json.loads((out / "report.json").read_text())["chat"]["end_of_turn_id"] == QWEN2_IM_END


def test_a_base_template_the_donor_can_spell_is_kept(tiny_models, tmp_path):
    out = tmp_path / "out"
    report = transplant(TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / "qwen2", out=out,
                                         method="mean", chat_template="base"))
    assert "SmolLM" in (out / "chat_template.jinja").read_text()  # the base's system prompt, not qwen2's
    assert report.chat["template"] == "base" and report.chat["end_of_turn_id"] == QWEN2_IM_END
    assert _ids(out) == [[QWEN2_ENDOFTEXT, QWEN2_IM_END]] * 2


def test_a_base_template_the_donor_cannot_spell_is_refused_before_work(tiny_models, tmp_path):
    """SmolLM2's ChatML template on the Llama-3 tokenizer: <|im_start|> would be six pieces."""
    out = tmp_path / "out"
    with pytest.raises(TokenSurgeonError, match=r"--chat-template base: .*<\|im_end\|>, <\|im_start\|>"):
        transplant(TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / "llama3", out=out,
                                    chat_template="base"))
    assert not out.exists()
    result = CliRunner().invoke(app, ["transplant", str(tiny_models["tied"]), str(TOKENIZERS / "llama3"), "-o",
                                      str(out), "--chat-template", "base"])
    assert result.exit_code == 2 and "--chat-template base" in result.stderr and len(result.stderr.splitlines()) <= 3
    with pytest.raises(TokenSurgeonError, match="chat-template"):
        TransplantConfig(base=out, donor=out, out=out, chat_template="mine")


def test_a_donor_without_a_template_keeps_its_eos(tiny_models, tmp_path):
    out = tmp_path / "out"
    report = transplant(TransplantConfig(base=tiny_models["tied"], donor=TOKENIZERS / "llama3", out=out, method="mean"))
    assert report.chat == {"template": None, "end_of_turn": None, "end_of_turn_id": None, "rendered": None}
    assert _ids(out) == [128001] * 2  # <|end_of_text|>
    assert "no chat template" in (out / "report.md").read_text()


def test_end_of_turn_and_eos_lists():
    specials = {"<|im_end|>": 2, "<|im_start|>": 1, "<end_of_turn>": 7, "<eos>": 8}
    assert end_of_turn("<|im_start|>assistant\nParis.<|im_end|>\n", specials) == "<|im_end|>"
    assert end_of_turn("<start_of_turn>model\nParis.<end_of_turn>\n", specials) == "<end_of_turn>"
    assert end_of_turn("Paris.\n", specials) is None and end_of_turn("no answer", specials) is None
    assert with_end_of_turn({"eos_token_id": 8}, 7) == {"eos_token_id": [8, 7]}
    assert with_end_of_turn({"eos_token_id": [8, 7]}, 7) == {"eos_token_id": [8, 7]}
    assert with_end_of_turn({"eos_token_id": None}, 7) == {"eos_token_id": [7]}
    assert with_end_of_turn({"eos_token_id": 8}, None) == {"eos_token_id": 8}


def test_no_template_is_found_without_loading_a_tokenizer(tiny_models, tmp_path, monkeypatch):
    """Where no file declares a template, transformers gives none; chat_turn says so without loading the tokenizer.
    A template in tokenizer_config.json is still found (by loading it)."""
    import shutil

    import transformers

    from tokensurgeon.pipeline.chat import chat_turn, declares_no_template

    monkeypatch.setenv("TOKENSURGEON_CACHE", str(tmp_path / "cache"))  # a rendered turn cached earlier is not a load
    plain = shutil.copytree(TOKENIZERS / "llama2", tmp_path / "plain", copy_function=shutil.copyfile)  # writable
    assert declares_no_template(plain)
    loads = []
    original = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda path, **kw: loads.append(path) or original(path, **kw))
    assert chat_turn(plain, "donor").template is None and loads == []
    settings = json.loads((plain / "tokenizer_config.json").read_text())
    (plain / "tokenizer_config.json").write_text(json.dumps(settings | {"chat_template": "{{ messages[0].content }}"}))
    assert not declares_no_template(plain)
    assert chat_turn(plain, "donor").template == "donor" and len(loads) == 1


def test_a_rendered_turn_is_cached_by_the_files_it_came_from(tmp_path, monkeypatch):
    """The second render of the same files loads no tokenizer and gives the same turn; a changed file, a dated
    template or remote code renders again."""
    import shutil

    import transformers

    from tokensurgeon.pipeline.chat import chat_turn

    monkeypatch.setenv("TOKENSURGEON_CACHE", str(tmp_path / "cache"))
    qwen2 = shutil.copytree(TOKENIZERS / "qwen2", tmp_path / "qwen2", copy_function=shutil.copyfile)
    loads = []
    original = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda path, **kw: loads.append(path) or original(path, **kw))
    first = chat_turn(qwen2, "donor")
    assert first.end_of_turn == "<|im_end|>" and first.end_of_turn_id == QWEN2_IM_END and len(loads) == 1
    assert chat_turn(qwen2, "base") == first.__class__(**(first.to_dict() | {"template": "base"})) and len(loads) == 1
    (qwen2 / "weights.safetensors").write_bytes(b"not read")  # weights are no part of the key
    assert chat_turn(qwen2, "donor") == first and len(loads) == 1
    (qwen2 / "chat_template.jinja").write_text("{{ messages[1].content }}")
    assert chat_turn(qwen2, "donor").rendered == "Paris." and len(loads) == 2
    assert chat_turn(qwen2, "donor").rendered == "Paris." and len(loads) == 2
    (qwen2 / "chat_template.jinja").write_text("{{ strftime_now('%Y') }}{{ messages[1].content }}")
    for _ in range(2):
        chat_turn(qwen2, "donor")
    chat_turn(qwen2, "donor", trust_remote_code=True)
    assert len(loads) == 5

