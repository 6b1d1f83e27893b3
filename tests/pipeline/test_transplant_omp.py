"""OMP end to end: through transplant() and through the CLI, with an untied donor head, and as the
default method of a draft (the README's headline method must run where users run it)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tokensurgeon.checkpoint import open_checkpoint, read_embeddings
from tokensurgeon.cli import app
from tokensurgeon.config import DEFAULT_METHOD, TransplantConfig
from tokensurgeon.pipeline.transplant import transplant

runner = CliRunner()


def provenance(out) -> list[dict]:
    """One row per line; split on newlines only (tokens may hold other line separators, e.g. U+2028)."""
    return [json.loads(line) for line in (out / "provenance.jsonl").read_text(encoding="utf-8").split("\n") if line]


def test_omp_through_transplant_with_untied_donor_head(tiny_models, tmp_path):
    """Base untied (SmolLM2 vocabulary) <- donor model with its own untied head (Llama-2 vocabulary):
    OMP rows are the provenance's weights over the base rows of its anchors, in both matrices."""
    out = tmp_path / "omp"
    report = transplant(TransplantConfig(base=tiny_models["untied"], donor=tiny_models["donor_llama2"], out=out,
                                         method="omp", method_options={"k": 4}))
    assert report.method["name"] == "omp" and report.donor["is_model"]
    rows = provenance(out)
    solved = [row for row in rows if row["path"] == "omp"]
    assert solved and all(1 <= len(row["sources"]) <= 4 for row in solved)
    base_embed, base_head = (m.float() for m in read_embeddings(open_checkpoint(tiny_models["untied"])))
    patched = open_checkpoint(out)
    embed, head = read_embeddings(patched)
    assert head is not None and not patched.tied
    for row in solved[:20]:  # the stored input row is the code replayed on the base rows (rounded to bf16)
        weights = torch.tensor(row["weights"])
        expected = (weights[:, None] * base_embed[row["sources"]]).sum(0)
        assert torch.allclose(embed[row["id"]].float(), expected, atol=1e-2, rtol=1e-2)
    # the head's rows come from the donor's own head (a code of their own): new, finite, not the input rows
    ids = [row["id"] for row in solved]
    assert torch.isfinite(head[ids].float()).all() and not torch.equal(head[ids], embed[ids])
    assert head.shape == embed.shape and base_head.shape[1] == head.shape[1]
    assert report.residuals["measure"].startswith("relative residual of the omp approximation")


def test_omp_through_the_cli_matches_python(tiny_models, tmp_path):
    """The CLI with --option k=4 writes the same weights and provenance as transplant() does."""
    via_python = tmp_path / "python"
    transplant(TransplantConfig(base=tiny_models["tied"], donor=tiny_models["donor_llama2"], out=via_python,
                                method="omp", method_options={"k": 4}))
    via_cli = tmp_path / "cli"
    result = runner.invoke(app, ["transplant", str(tiny_models["tied"]), str(tiny_models["donor_llama2"]),
                                 "-o", str(via_cli), "--method", "omp", "--option", "k=4", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"]["options"] == {"k": 4}
    assert (via_cli / "provenance.jsonl").read_bytes() == (via_python / "provenance.jsonl").read_bytes()
    assert all(torch.equal(a, b) for a, b in zip(load_file(via_cli / "model.safetensors").values(),
                                                 load_file(via_python / "model.safetensors").values()))


def test_draft_default_method_in_python_and_cli(tiny_models, tmp_path):
    """Drafts take the default method, whoever asks: TransplantConfig and the CLI both pick subword-mean (an omp
    draft for Gemma3 accepted none of its proposals), and --method omp still makes an omp draft."""
    target = tiny_models["donor_llama2"]
    config = TransplantConfig(base=tiny_models["tied"], donor=target, out=tmp_path / "py", draft_for=target)
    assert config.method == DEFAULT_METHOD == "subword-mean"
    result = runner.invoke(app, ["transplant", str(tiny_models["tied"]), "--as-draft-for", str(target),
                                 "-o", str(tmp_path / "cli"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"]["name"] == "subword-mean"
    assert any(row["path"] == "subword-mean" for row in provenance(tmp_path / "cli"))
    result = runner.invoke(app, ["transplant", str(tiny_models["tied"]), "--as-draft-for", str(target),
                                 "-o", str(tmp_path / "omp"), "--method", "omp", "--option", "k=4", "--json"])
    assert result.exit_code == 0, result.output
    assert any(row["path"] == "omp" for row in provenance(tmp_path / "omp"))
