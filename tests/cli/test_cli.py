from __future__ import annotations

import json
import re

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


def test_methods_says_what_focus_and_tokenadapt_need():
    from tokensurgeon.methods import INIT_METHODS

    assert INIT_METHODS["focus"].needs() == INIT_METHODS["tokenadapt"].needs() == "a donor model or --corpus"
    assert INIT_METHODS["omp"].needs() == "a donor model" and INIT_METHODS["subword-mean"].needs() == "-"
    output = runner.invoke(app, ["methods"], terminal_width=200).output
    assert output.count("a donor model or --corpus") == 2


def test_cli_reference_is_current(tmp_path):
    """docs/cli.md is generated from the app; regenerate it with scripts/gen_cli_docs.sh."""
    from typer.cli import app as typer_app

    out = tmp_path / "cli.md"
    result = runner.invoke(typer_app, ["tokensurgeon.cli", "utils", "docs", "--name", "tokensurgeon",
                                       "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == (ROOT / "docs" / "cli.md").read_text()


def _texts(tmp_path):
    """A folder of texts: two at the top, one in a subfolder, a hidden one and a non-text file (both left out)."""
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    for name, text in {"b.txt": "Beta text.\n", "a.txt": "Alpha text, longer.\n", "sub/c.txt": "Gamma.\n",
                       ".hidden.txt": "never read\n"}.items():
        (folder / name).write_text(text)
    (folder / "weights.bin").write_bytes(b"\xff\x00\xfe")
    return folder


def _inspected_texts(args):
    result = runner.invoke(app, ["inspect", str(SMOLLM2_TOKENIZER), str(TOKENIZERS / "gpt2"), "--json", *args])
    assert result.exit_code == 0, result.output
    return [(row["label"], row["n_bytes"]) for row in json.loads(result.stdout)["texts"]]


def test_several_text_files_after_one_flag(tmp_path):
    """A shell glob (`--text data/*.txt`) arrives as several files after one flag: all are read."""
    folder = _texts(tmp_path)
    expected = [("a.txt", 20), ("b.txt", 11)]
    assert _inspected_texts(["--text", str(folder / "a.txt"), str(folder / "b.txt")]) == expected
    result = runner.invoke(app, ["inspect", "--text", str(folder / "a.txt"), str(folder / "b.txt"),
                                 str(SMOLLM2_TOKENIZER), str(TOKENIZERS / "gpt2"), "--json"])
    assert result.exit_code == 0, result.output  # directories after the files are BASE and DONOR again
    assert [row["label"] for row in json.loads(result.stdout)["texts"]] == ["a.txt", "b.txt"]


def test_a_directory_or_a_quoted_glob_gives_its_text_files_sorted(tmp_path):
    folder = _texts(tmp_path)
    assert _inspected_texts(["--text", str(folder)]) == [("a.txt", 20), ("b.txt", 11), ("c.txt", 7)]
    assert _inspected_texts(["--text", str(folder / "*.txt")]) == [("a.txt", 20), ("b.txt", 11)]


@pytest.mark.parametrize("value, message", [("empty", "no .txt or .md file in"), ("nothing*.txt", "no file matches")])
def test_a_directory_or_glob_without_texts_is_one_line(tmp_path, value, message):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["inspect", str(SMOLLM2_TOKENIZER), str(TOKENIZERS / "gpt2"),
                                 "--text", str(tmp_path / value)])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output + result.stderr


def test_transplant_takes_several_eval_texts_after_one_flag(tiny_models, tmp_path):
    folder = _texts(tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["transplant", str(tiny_models["tied"]), str(TOKENIZERS / "gpt2"), "-o", str(out),
                                 "--method", "mean", "--eval-text", str(folder / "b.txt"), str(folder / "a.txt"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert [row["text"] for row in json.loads(result.stdout)["evaluation"]] == ["b.txt", "a.txt"]


@pytest.mark.parametrize("command", [[], ["inspect"], ["transplant"], ["evaluate"], ["export"], ["heal"], ["compare"],
                                     ["check"], ["methods"], ["hypernet"], ["hypernet", "train"]])
def test_help_shows_placeholders_not_python_types(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert not re.search(r"<(bool|int|float|str|path|list\[\w+\])>", result.output), result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage and "[base]" not in usage.lower().replace("[options]", "")


def test_usage_names_the_arguments_in_capitals():
    def usage(command):
        return runner.invoke(app, [command, "--help"], prog_name="tokensurgeon").output

    assert "Usage: tokensurgeon inspect [OPTIONS] BASE [DONOR]" in usage("inspect")
    assert "Usage: tokensurgeon transplant [OPTIONS] BASE [DONOR]" in usage("transplant")
    assert "Usage: tokensurgeon evaluate [OPTIONS] MODELS..." in usage("evaluate")


def test_without_a_terminal_long_phases_get_one_line_naming_the_output(tiny_models, tmp_path, monkeypatch):
    """A pipe or a log gets one stderr line per phase that runs long (every phase here: threshold 0); the
    evaluation's labels name the output folder, never the staging folder it is written in."""
    import tokensurgeon.cli.common as common

    monkeypatch.setattr(common, "PHASE_LINE_AFTER_S", 0.0)
    text = tmp_path / "news.txt"
    text.write_text("The council met on Tuesday to discuss the new budget. " * 40)
    result = runner.invoke(app, ["transplant", str(tiny_models["tied"]), str(TOKENIZERS / "gpt2"), "-o",
                                 str(tmp_path / "patched"), "--method", "mean", "--eval-text", str(text)])
    assert result.exit_code == 0, result.output
    phases = [line.split(": ")[1] for line in result.stderr.splitlines() if line.startswith("tokensurgeon: ")]
    assert {"tied/news.txt", "patched/news.txt"} <= set(phases) and len(phases) == len(set(phases))
    assert ".partial" not in result.stderr


def test_quick_phases_print_nothing():
    import io

    from tokensurgeon.cli.common import phase_lines

    stream = io.StringIO()
    update = phase_lines(stream, after=60)
    for done in range(5):
        update("write", done, 4)
    assert stream.getvalue() == ""
    update = phase_lines(stream, after=0)
    update("write", 1, 4), update("write", 2, 4), update("evaluate x", 1, 9)
    assert stream.getvalue().splitlines() == ["tokensurgeon: write: 1/4 after 0 s", "tokensurgeon: evaluate x: 1/9 after 0 s"]


def test_a_phase_note_follows_its_line():
    """heal's phase passes its loss and tokens/s as a note; phases without one print as before."""
    import io

    from tokensurgeon.cli.common import phase_lines

    stream = io.StringIO()
    update = phase_lines(stream, after=0, every=0)
    update("heal", 3, 10, "loss 1.234, 512 tok/s"), update("write", 1, 2)
    assert stream.getvalue().splitlines() == ["tokensurgeon: heal: 3/10 after 0 s, loss 1.234, 512 tok/s",
                                              "tokensurgeon: write: 1/2 after 0 s"]


def test_a_phase_that_reports_only_at_its_end_still_gets_its_line(monkeypatch):
    """A method that ticks once, when done, after a long silence: the phase is timed from the last report."""
    import io

    import tokensurgeon.cli.common as common

    clock = iter([100.0, 101.0, 160.0])
    monkeypatch.setattr(common.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    update = common.phase_lines(stream, after=5)  # 100: the job starts
    update("evaluate base", 3, 3)  # 101: a quick phase
    update("omp method", 1, 1)  # 160: its only tick
    assert stream.getvalue() == "tokensurgeon: omp method: 1/1 after 59 s\n"


def test_long_phases_get_a_line_each_interval(monkeypatch):
    import io

    import tokensurgeon.cli.common as common

    clock = iter([0.0, 0.0, 4.0, 5.0, 30.0, 64.0, 66.0, 127.0])  # phase_lines reads the clock once when made
    monkeypatch.setattr(common.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    update = common.phase_lines(stream, after=5, every=60)
    for done in range(7):
        update("method", done, 6)
    assert stream.getvalue().splitlines() == ["tokensurgeon: method: 2/6 after 5 s",
                                              "tokensurgeon: method: 5/6 after 66 s",
                                              "tokensurgeon: method: 6/6 after 127 s"]
