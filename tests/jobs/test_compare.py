"""compare: one session, one base evaluation, skipped methods with reasons, the best model kept atomically."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import tokensurgeon.checkpoint.reader as checkpoint_module
import tokensurgeon.evaluation.bpb as evaluate_module
from conftest import CORPORA, CountingReads, TOKENIZERS
from tokensurgeon.cli import app
from tokensurgeon.jobs.compare import compare, geometric_mean
from tokensurgeon.config import CompareConfig
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.methods.mean import MeanMethod


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "news.txt"
    path.write_text((CORPORA / "lee_news.txt").read_text(encoding="utf-8")[:1200], encoding="utf-8")
    return path


def test_compare_keeps_the_best_and_reads_everything_once(tiny_models, text, tmp_path, monkeypatch):
    base, out = tiny_models["tied"], tmp_path / "best"
    loads, real_load = [], evaluate_module.load_for_eval
    monkeypatch.setattr(evaluate_module, "load_for_eval", lambda path, **kw: loads.append(path) or real_load(path, **kw))
    reads = CountingReads()
    monkeypatch.setattr(checkpoint_module, "read_tensor", reads)
    report = compare(CompareConfig(base=base, donor=TOKENIZERS / "llama2", texts=(text,),
                                   methods=("subword-mean", "zero", "omp", "mean"), out=out))

    assert reads.names == ["model.embed_tokens.weight"]  # one embedding read for three methods
    assert [p.name for p in loads].count(base.name) == 1  # the base is scored once, not per method
    assert sorted(p.name for p in loads if p.name != base.name) == ["mean", "subword-mean", "zero"]
    ok = [e for e in report.entries if e.status == "ok"]
    assert [e.method for e in ok] == sorted((e.method for e in ok), key=lambda m: next(x.score for x in ok
                                                                                       if x.method == m))
    assert report.best == ok[0].method and len(ok) == 3
    skipped = {e.method: e.reason for e in report.entries if e.status == "skipped"}
    assert list(skipped) == ["omp"] and "tokenizer only" in skipped["omp"]
    for entry in ok:
        assert entry.score == pytest.approx(geometric_mean([row.ratio for row in entry.evaluation]))
        assert entry.evaluation[0].base_bpb == report.texts[0].base_bpb
        assert entry.seconds > 0 and entry.peak_rss_increase is not None and entry.peak_rss_increase >= 0
    # subword-mean and mean write different rows, so they score differently
    assert len({e.evaluation[0].patched_bpb for e in ok}) == 3

    kept = json.loads((out / "report.json").read_text())
    assert kept["method"]["name"] == report.best and kept["evaluation"][0]["ratio"] == pytest.approx(ok[0].score)
    assert json.loads((out / "compare.json").read_text())["best"] == report.best
    assert "## Method comparison" in (out / "report.md").read_text()
    assert 'id="compare"' in (out / "report.html").read_text()
    assert (out / "model.safetensors").is_file() and (out / "provenance.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no staging left beside OUT
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no per-method staging left inside


def test_failure_midway_leaves_nothing(tiny_models, text, tmp_path, monkeypatch):
    def broken(self, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(MeanMethod, "initialise", broken)
    with pytest.raises(RuntimeError, match="boom"):
        compare(CompareConfig(base=tiny_models["tied"], donor=TOKENIZERS / "llama2", texts=(text,),
                              methods=("zero", "mean"), out=tmp_path / "best"))
    assert list(tmp_path.iterdir()) == []


def test_nothing_runnable_is_an_error_and_writes_nothing(tiny_models, text, tmp_path):
    with pytest.raises(TokenSurgeonError, match="no method could run.*omp: .*tokenizer only"):
        compare(CompareConfig(base=tiny_models["tied"], donor=TOKENIZERS / "llama2", texts=(text,),
                              methods=("omp",), out=tmp_path / "best"))
    assert list(tmp_path.iterdir()) == []


def test_cli_json_and_user_errors(tiny_models, text, tmp_path):
    runner = CliRunner()
    base, donor = str(tiny_models["tied"]), str(TOKENIZERS / "llama2")
    result = runner.invoke(app, ["compare", base, donor, "--text", str(text), "--methods", "zero,omp", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["best"] == "zero" and data["out"] is None
    assert [(e["method"], e["status"]) for e in data["entries"]] == [("zero", "ok"), ("omp", "skipped")]
    assert set(data["entries"][0]["evaluation"][0]) >= {"text", "base_bpb", "patched_bpb", "ratio"}

    for args, message in ((["--methods", "zero,nope"], "unknown method 'nope'"),
                          (["--methods", "zero", "--option", "omp.k=3"], "not in --methods"),
                          (["--option", "k=3"], "METHOD.KEY=VALUE")):
        result = runner.invoke(app, ["compare", base, donor, "--text", str(text), *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output

    table = runner.invoke(app, ["compare", base, donor, "--text", str(text), "--methods", "mean,zero",
                                "-o", str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "Methods ranked" in table.output and "base" in table.output and "written to" in table.output
