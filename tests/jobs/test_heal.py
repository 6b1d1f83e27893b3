from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import CORPORA, TOKENIZERS
from tokensurgeon.checkpoint import open_checkpoint, read_embeddings
from tokensurgeon.cli import app
from tokensurgeon.config import HealConfig, TransplantConfig
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.jobs.heal import heal, split_held_out
from tokensurgeon.pipeline.transplant import transplant

runner = CliRunner()
QUICK = {"steps": 4, "eval_every": 2, "batch_size": 2, "context": 32, "held_out": 0.2, "eval_max_bytes": 600,
         "compare_base": False}


def weights(path):
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors |= load_file(file)
    return tensors


@pytest.fixture(scope="module")
def patched(tiny_models, tmp_path_factory):
    """Tiny SmolLM2-vocabulary models given the Llama-2 tokenizer: tied (one file) and untied (sharded)."""
    root = tmp_path_factory.mktemp("heal")
    for kind in ("tied", "untied"):
        transplant(TransplantConfig(base=tiny_models[kind], donor=TOKENIZERS / "llama2", out=root / kind))
    return {kind: root / kind for kind in ("tied", "untied")}


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "spa.txt"
    path.write_text((CORPORA / "udhr" / "spa.txt").read_text(encoding="utf-8")[:3000], encoding="utf-8")
    return path


def new_ids(path):
    rows = [json.loads(line) for line in (path / "provenance.jsonl").read_text().split("\n") if line]
    return [row["id"] for row in rows if row["path"] not in ("copy", "padding-mean")]


def test_split_held_out_cuts_between_characters():
    text = "añb" * 10 + "日本語"
    train, held = split_held_out(text, 0.1)
    assert train + held == text and len(held.encode()) <= len(text.encode()) * 0.1 + 3 and held.endswith("語")


def test_only_new_rows_change(patched, text, tmp_path):
    source, out = open_checkpoint(patched["untied"]), tmp_path / "out"
    report = heal(HealConfig(patched=source.path, texts=(text,), out=out, lr=1e-2, **QUICK))
    assert report.improved and report.best_step > 0
    assert all(row["after_bpb"] < row["before_bpb"] for row in report.texts)
    before, after = weights(source.path), weights(out)
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {source.input_name, source.output_name}
    new = torch.zeros(source.vocab_rows, dtype=torch.bool)
    new[new_ids(source.path)] = True
    for name in changed:
        assert after[name].dtype == before[name].dtype == torch.bfloat16
        assert torch.equal(after[name][~new], before[name][~new])  # copied rows bit for bit
        assert not torch.equal(after[name][new], before[name][new])
    assert {f.name for f in source.path.iterdir()} | {"heal.json"} == {f.name for f in out.iterdir()}
    assert json.loads((out / "heal.json").read_text())["best_step"] == report.best_step


def test_never_worse_than_input(patched, text, tmp_path):
    source = patched["tied"]
    report = heal(HealConfig(patched=source, texts=(text,), out=tmp_path / "out", lr=100.0, **QUICK))
    assert not report.improved and report.best_step == 0 and len(report.history) > 1
    assert max(report.history[-1]["held_out_bpb"]) > report.texts[0]["before_bpb"]  # training did hurt
    assert report.texts[0]["after_bpb"] == report.texts[0]["before_bpb"]
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()


def test_deterministic(patched, text, tmp_path):
    runs = [heal(HealConfig(patched=patched["tied"], texts=(text,), out=tmp_path / name, lr=1e-2, **QUICK))
            for name in ("a", "b")]
    assert runs[0].improved
    assert runs[0].history == runs[1].history
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_rows_all_needs_no_provenance(tiny_models, text, tmp_path):
    base = tiny_models["tied"]
    with pytest.raises(TokenSurgeonError, match="pass --rows all"):
        heal(HealConfig(patched=base, texts=(text,), out=tmp_path / "refused", **QUICK))
    assert not (tmp_path / "refused").exists()
    report = heal(HealConfig(patched=base, texts=(text,), out=tmp_path / "out", rows="all", lr=1e-3,
                             anchor_weight=0.0, **QUICK))
    assert report.improved and report.trainable_rows == open_checkpoint(base).vocab_rows
    embed, _ = read_embeddings(open_checkpoint(tmp_path / "out"))
    assert not torch.equal(embed, read_embeddings(open_checkpoint(base))[0])


def test_cli_json(patched, text, tmp_path):
    result = runner.invoke(app, ["heal", str(patched["tied"]), "--text", str(text), "-o", str(tmp_path / "out"),
                                 "--steps", "2", "--eval-every", "1", "--batch-size", "2", "--context", "32",
                                 "--held-out", "0.2", "--eval-max-bytes", "600", "--lr", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["texts"][0]["text"] == "spa.txt" and data["steps_run"] == 2 and data["options"]["lr"] == 0.01
    assert runner.invoke(app, ["heal", "--help"]).output.count("Example") == 1


@pytest.mark.parametrize("args, message", [
    (["--text", "TEXT"], "output"),  # -o points at an existing, non-empty directory
    ([], "heal needs text"),
    (["--text", "/nonexistent.txt"], "does not exist"),
    (["--text", "TEXT", "--held-out", "1.5"], "--held-out"),
    (["--text", "TEXT", "--rows", "some"], "--rows"),
])
def test_user_errors_are_one_line_exit_2(patched, text, args, message):
    args = [str(text) if arg == "TEXT" else arg for arg in args]
    result = runner.invoke(app, ["heal", str(patched["tied"]), "-o", str(patched["untied"]), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_missing_patched_dir(text, tmp_path):
    result = runner.invoke(app, ["heal", str(tmp_path / "missing"), "--text", str(text), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a directory" in result.stderr and not (tmp_path / "o").exists()
