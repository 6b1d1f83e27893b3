from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import ROOT, SMOLLM2_TOKENIZER, TOKENIZERS
from tokensurgeon import __version__
from tokensurgeon.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", ["inspect", "transplant", "compare"])
def test_help_has_examples(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Example" in result.output


def test_inspect_json_keys(tmp_path):
    text = tmp_path / "digits.txt"
    text.write_text("In 2024 the count was 1234567.\n")
    result = runner.invoke(app, ["inspect", str(SMOLLM2_TOKENIZER), str(TOKENIZERS / "llama3"),
                                 "--text", str(text), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["base"]["vocab_size"] == 49152 and data["donor"]["vocab_size"] == 128257
    assert 39_000 < data["shared_tokens"] < 39_600 and data["new_tokens"] > 80_000
    assert {row["match"] for row in data["special_tokens"]} >= {"special-role", "special-content"}
    assert data["texts"][0]["n_bytes"] == len(text.read_bytes())
    assert any("number schemes differ" in w for w in data["warnings"])


def test_inspect_tables():
    result = runner.invoke(app, ["inspect", str(TOKENIZERS / "gpt2"), str(TOKENIZERS / "mistral-v1")])
    assert result.exit_code == 0
    assert "same bytes, other spelling" in result.output and "Number splitting" in result.output


@pytest.mark.parametrize("args, message", [
    (["inspect", "/nonexistent/base", str(TOKENIZERS / "gpt2")], "not a directory"),
    (["transplant", str(TOKENIZERS / "gpt2"), str(TOKENIZERS / "llama3"), "-o", "/nonexistent/out"], "no config.json"),
    (["transplant", str(TOKENIZERS / "gpt2"), str(TOKENIZERS / "llama3"), "-o", "/nonexistent/out", "--option", "k"],
     "KEY=VALUE"),
])
def test_user_errors_are_one_line_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # one message, possibly wrapped once


def test_transplant_json(tiny_models, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["transplant", str(tiny_models["tied"]), str(TOKENIZERS / "gpt2"), "-o", str(out),
                                 "--method", "mean", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"]["name"] == "mean" and report["output"]["rows"] == 50257
    assert json.loads((out / "report.json").read_text())["counts"] == report["counts"]


def test_methods_lists_registry():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0 and "subword-mean" in result.output and "hewitt" in result.output


def test_cli_reference_is_current(tmp_path):
    """docs/cli.md is generated from the app; regenerate it with scripts/gen_cli_docs.sh."""
    from typer.cli import app as typer_app

    out = tmp_path / "cli.md"
    result = runner.invoke(typer_app, ["tokensurgeon.cli", "utils", "docs", "--name", "tokensurgeon",
                                       "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == (ROOT / "docs" / "cli.md").read_text()
