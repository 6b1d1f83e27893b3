"""Deployment check: the static engine checks on good and broken checkpoints, and the GGUF converter's verdicts.

The converter is llama.cpp's own script; tests run stand-in scripts with its command line and failure modes,
and the real one when TOKENSURGEON_LLAMA_CPP points to a llama.cpp checkout (or an unpacked llama-cpp-python
source distribution).
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from tokensurgeon.deploy import check_deploy, check_draft, check_model, convert, find_converter, render_text
from tokensurgeon.deploy.gguf import bos_template, explain, failure_reason
from tokensurgeon.errors import TokenSurgeonError

LLAMA_CPP = os.environ.get("TOKENSURGEON_LLAMA_CPP")


def _failed(findings):
    return {f.check: f.message for f in findings if not f.ok}


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps(data | changes))


def test_a_sound_checkpoint_passes(tiny_models):
    for name in ("tied", "untied"):
        findings = check_model(tiny_models[name])
        assert not _failed(findings), render_text(check_deploy(tiny_models[name]))
        assert {"config vocab_size", "token ids below vocab_size", "special ids in the vocabulary"} <= {f.check for f in findings}


def test_vocab_size_disagreeing_with_the_embedding_is_refused(tiny_models, fresh_copy):
    model = fresh_copy(tiny_models["untied"])
    rows = json.loads((model / "config.json").read_text())["vocab_size"]
    _edit(model / "config.json", vocab_size=rows - 10)
    failed = _failed(check_model(model))
    assert f"config.json vocab_size = {rows - 10:,}, input embedding model.embed_tokens.weight has {rows:,} rows" \
        == failed["config vocab_size"]
    assert "10 ids at or above it" in failed["token ids below vocab_size"]


def test_special_ids_outside_the_vocabulary_are_refused(tiny_models, fresh_copy):
    model = fresh_copy(tiny_models["tied"])
    _edit(model / "generation_config.json", eos_token_id=[2, 99999])
    _edit(model / "tokenizer_config.json", bos_token="<|no such token|>")
    report = check_deploy(model)
    failed = _failed(report.findings)
    assert failed["special ids in the vocabulary"] == "generation_config.json eos_token_id = 99999 (not an id of the tokenizer)"
    assert "bos '<|no such token|>'" in failed["special tokens in the vocabulary"]
    assert not report.ok and "FAIL" in render_text(report) and "GGUF conversion not run" in render_text(report)


def test_a_draft_must_share_its_targets_vocabulary(tiny_models):
    assert not _failed(check_draft(tiny_models["tied"], tiny_models["untied"]))
    failed = _failed(check_draft(tiny_models["tied"], tiny_models["donor_llama2"]))
    assert "pairs differ" in failed["draft vocabulary equals target's"]
    assert "draft vocab_size equals target's" in failed


def _fake_llama_cpp(root: Path, body: str) -> Path:
    """A folder shaped like llama.cpp whose converter runs body (argv as the real one's)."""
    (root / "gguf-py").mkdir(parents=True)
    script = root / "convert_hf_to_gguf.py"
    script.write_text("import sys\nmodel, out = sys.argv[1], sys.argv[sys.argv.index('--outfile') + 1]\n"
                      + textwrap.dedent(body))
    return root


def test_converter_failure_reason_and_hint(tiny_models, fresh_copy, tmp_path):
    llama_cpp = _fake_llama_cpp(tmp_path / "llama.cpp", """
        print("INFO:hf-to-gguf:Loading model")
        raise NotImplementedError("BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")
    """)
    model = fresh_copy(tiny_models["tied"])
    plain = convert(model, llama_cpp)
    assert not plain.ok and plain.reason == \
        "NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()"
    assert "add_bos_token" not in plain.hint
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["post_processor"] = {"type": "Sequence", "processors": [spec["post_processor"], {
        "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                                 {"Sequence": {"id": "A", "type_id": 0}}], "pair": [], "special_tokens": {}}]}
    (model / "tokenizer.json").write_text(json.dumps(spec))
    assert bos_template(model)
    assert "add_bos_token" in convert(model, llama_cpp / "convert_hf_to_gguf.py").hint


def test_converter_success_and_where_it_is_found(tiny_models, tmp_path):
    sdist = tmp_path / "llama_cpp_python-0.3" / "vendor" / "llama.cpp"
    _fake_llama_cpp(sdist, "open(out, 'wb').write(b'GGUF' + bytes(60))\n")
    assert find_converter(tmp_path / "llama_cpp_python-0.3") == sdist / "convert_hf_to_gguf.py"
    result = convert(tiny_models["tied"], sdist.parent.parent, outfile=tmp_path / "tiny.gguf")
    assert result.ok and result.gguf_bytes == 64 and result.outfile == str(tmp_path / "tiny.gguf")
    temporary = convert(tiny_models["tied"], sdist)
    assert temporary.ok and temporary.outfile is None
    with pytest.raises(TokenSurgeonError, match="no convert_hf_to_gguf.py"):
        find_converter(tmp_path)
    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "convert_hf_to_gguf.py").write_text("")
    with pytest.raises(TokenSurgeonError, match="no gguf-py"):
        find_converter(tmp_path / "lonely")


def test_failure_reason_falls_back_to_the_last_line():
    assert failure_reason(["loading", "Killed"], -9) == "Killed"
    assert failure_reason([], 1) == "exit status 1 and no output"
    assert failure_reason(["Traceback", "  File x", "ValueError: Unexpected tensor", "  during handling"], 1) \
        == "ValueError: Unexpected tensor"
    vocab_assert = ["Traceback", '  File "base.py", line 1586', "    assert max(tokenizer.vocab.values()) < vocab_size",
                    "           ^^^^^", "AssertionError"]
    assert failure_reason(vocab_assert, 1) == "AssertionError: assert max(tokenizer.vocab.values()) < vocab_size"
    assert "vocab_size" in explain(failure_reason(vocab_assert, 1), Path("."))


@pytest.mark.skipif(not LLAMA_CPP, reason="set TOKENSURGEON_LLAMA_CPP to a llama.cpp checkout to run its converter")
def test_real_converter_on_a_tiny_model(tiny_models, tmp_path):
    result = convert(tiny_models["tied"], Path(LLAMA_CPP), outfile=tmp_path / "tiny.gguf", timeout=600)
    assert result.ok, (result.reason, result.tail)
    assert (tmp_path / "tiny.gguf").read_bytes()[:4] == b"GGUF"


def test_check_command_exit_codes(tiny_models, fresh_copy):
    from typer.testing import CliRunner

    from tokensurgeon.cli import app

    good = CliRunner().invoke(app, ["check", str(tiny_models["tied"])])
    assert good.exit_code == 0 and "deploy check" in good.output and "FAIL" not in good.output
    bad = CliRunner().invoke(app, ["check", str(tiny_models["tied"]), "--draft-for", str(tiny_models["donor_llama2"]),
                                   "--json"])
    assert bad.exit_code == 1
    assert not json.loads(bad.stdout)["ok"]


def test_bos_policy_as_config_restores_the_donors_tokenizer(tiny_models, fresh_copy, tmp_path):
    from tokensurgeon.checkpoint.tokenizer_files import bos_post_processor
    from tokensurgeon.deploy.gguf import bos_policy_as_config

    model = fresh_copy(tiny_models["tied"])
    spec = json.loads((model / "tokenizer.json").read_text())
    donor_processor = spec["post_processor"]
    spec["post_processor"] = bos_post_processor(donor_processor, "<|im_start|>", 1)
    (model / "tokenizer.json").write_text(json.dumps(spec))
    notes = bos_policy_as_config(model, tmp_path / "fixed")
    fixed = tmp_path / "fixed"
    assert json.loads((fixed / "tokenizer.json").read_text())["post_processor"] == donor_processor
    assert json.loads((fixed / "tokenizer_config.json").read_text())["add_bos_token"] is True
    assert (fixed / "model.safetensors").is_symlink() and not bos_template(fixed)
    assert "add_bos_token" in notes[0]


def _hashing_llama_cpp(root: Path, known: Path) -> Path:
    """A stand-in converter that recognises a tokenizer as llama.cpp's does: by the ids AutoTokenizer.encode gives
    a fixed text (special tokens included), against the ids of the known tokenizer; a GGUF records add_bos_token
    as gguf-py reads it (the post-processor, else tokenizer_config.json)."""
    from transformers import AutoTokenizer

    text = "Hello world 123 ñ 😀"
    (root / "known.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "known.json").write_text(json.dumps(AutoTokenizer.from_pretrained(known).encode(text)))
    return _fake_llama_cpp(root, f"""
        import json, pathlib
        from transformers import AutoTokenizer
        from gguf_stub import add_bos
        here = pathlib.Path(__file__).parent
        if AutoTokenizer.from_pretrained(model).encode({text!r}) != json.loads((here / "known.json").read_text()):
            raise NotImplementedError("BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")
        open(out, "w").write("GGUF add_bos_token=" + str(add_bos(pathlib.Path(model))))
    """)


def test_a_bos_post_processor_is_stated_as_add_bos_token_for_the_converter(tiny_models, fresh_copy, tmp_path):
    """P1 (Gemma3 <- SmolLM2): the BOS post-processor transplant adds changes the ids llama.cpp hashes, so the
    converter runs on a view with the BOS policy in tokenizer_config.json; the model itself keeps it (transformers)."""
    from tokensurgeon.checkpoint.tokenizer_files import bos_post_processor

    llama_cpp = _hashing_llama_cpp(tmp_path / "llama.cpp", tiny_models["tied"])
    (llama_cpp / "gguf_stub.py").write_text(textwrap.dedent("""
        import json
        def add_bos(model):
            spec = json.loads((model / "tokenizer.json").read_text())
            processors = spec["post_processor"].get("processors", [spec["post_processor"]])
            if any(p.get("type") == "TemplateProcessing" and len(p["single"]) > 1 for p in processors):
                return True
            return json.loads((model / "tokenizer_config.json").read_text()).get("add_bos_token", False)
    """))
    assert convert(tiny_models["tied"], llama_cpp, outfile=tmp_path / "plain.gguf").ok
    model = fresh_copy(tiny_models["tied"])
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["post_processor"] = bos_post_processor(spec["post_processor"], "<|im_start|>", 1)
    (model / "tokenizer.json").write_text(json.dumps(spec))
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    report = check_deploy(model, llama_cpp=llama_cpp, outfile=tmp_path / "p1.gguf")
    assert report.ok, render_text(report)
    assert (tmp_path / "p1.gguf").read_text() == "GGUF add_bos_token=True"
    assert "add_bos_token" in " ".join(report.conversion.adapted)
    assert "add_bos_token" in render_text(report)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_a_tokenizer_the_converter_does_not_know_still_fails(tiny_models, fresh_copy, tmp_path):
    from tokensurgeon.checkpoint.tokenizer_files import bos_post_processor

    llama_cpp = _hashing_llama_cpp(tmp_path / "llama.cpp", tiny_models["donor_llama2"])
    (llama_cpp / "gguf_stub.py").write_text("def add_bos(model):\n    return True\n")
    model = fresh_copy(tiny_models["tied"])
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["post_processor"] = bos_post_processor(spec["post_processor"], "<|im_start|>", 1)
    (model / "tokenizer.json").write_text(json.dumps(spec))
    report = check_deploy(model, llama_cpp=llama_cpp)
    assert not report.ok and report.conversion.reason.startswith("NotImplementedError: BPE pre-tokenizer")
    assert "FAIL" in render_text(report) and report.conversion.adapted


def test_export_check_deploy_json_is_one_document(tiny_models, tmp_path):
    from typer.testing import CliRunner

    from tokensurgeon.cli import app

    llama_cpp = _fake_llama_cpp(tmp_path / "llama.cpp", "open(out, 'wb').write(b'GGUF' + bytes(60))\n")
    result = CliRunner().invoke(app, ["export", str(tiny_models["tied"]), "-o", str(tmp_path / "out"),
                                      "--check-deploy", str(llama_cpp), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # raises on two documents
    assert data["export"]["mode"] == "full" and data["deploy"]["ok"] and data["deploy"]["conversion"]["ok"]
    text = CliRunner().invoke(app, ["export", str(tiny_models["tied"]), "-o", str(tmp_path / "out2"),
                                    "--check-deploy", str(llama_cpp)])
    assert text.exit_code == 0 and "check passed" in text.output and "deploy check of" in text.output
    wrong = CliRunner().invoke(app, ["export", str(tiny_models["tied"]), "-o", str(tmp_path / "out3"),
                                     "--check-deploy", str(tmp_path / "nowhere")])
    assert wrong.exit_code == 2 and "no convert_hf_to_gguf.py" in wrong.stderr
    assert not (tmp_path / "out3").exists()  # refused before the export
