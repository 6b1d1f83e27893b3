"""The audit wired in: a transplant's report carries it, and `inspect OUT --audit` repeats it from the
output directory alone (report.json, provenance.jsonl and the written rows), without the transplant."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tokensurgeon.cli import app
from tokensurgeon.config import TransplantConfig
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.evaluation.audit import BASE_CHECKS, DONOR_CHECKS
from tokensurgeon.pipeline.audit import audit_output
from tokensurgeon.pipeline.transplant import transplant

runner = CliRunner()


@pytest.fixture(scope="module")
def omp_output(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "omp"
    transplant(TransplantConfig(base=tiny_models["tied"], donor=tiny_models["donor_llama2"], out=out, method="omp",
                                method_options={"k": 4}))
    return out


def test_transplant_report_carries_the_audit(omp_output):
    report = json.loads((omp_output / "report.json").read_text())
    audit = report["audit"]
    computed = report["counts"]["new"] + report["counts"]["new-special"]
    assert audit["checked"] == computed > 0
    assert audit["checks"] == list(BASE_CHECKS + DONOR_CHECKS)  # omp read the donor model
    assert audit["flagged"] <= sum(audit["counts"].values()) and audit["flagged"] < computed / 2
    assert "## Audit" in (omp_output / "report.md").read_text()
    html = (omp_output / "report.html").read_text()
    assert '<section id="audit">' in html and f"{audit['flagged']:,} of {audit['checked']:,} computed rows" in html


def test_audit_of_the_output_directory_repeats_the_transplants(omp_output):
    """Same rows, same provenance: the same flags (the written rows are bf16, so scores are rounded)."""
    written = json.loads((omp_output / "report.json").read_text())["audit"]
    again = audit_output(omp_output)
    assert (again.checked, again.checks) == (written["checked"], written["checks"])
    assert again.counts == written["counts"]
    assert [token.id for token in again.tokens] == [token["id"] for token in written["tokens"]]


def test_tokenizer_only_transplant_audits_base_space_only(tiny_models, tmp_path):
    report = transplant(TransplantConfig(base=tiny_models["tied"], donor=tiny_models["donor_llama2"],
                                         out=tmp_path / "mean", method="subword-mean"))
    assert report.audit["checks"] == list(BASE_CHECKS)


def test_inspect_audit_through_the_cli(omp_output, tmp_path):
    result = runner.invoke(app, ["inspect", str(omp_output), "--audit", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checked"] > 0
    not_output = runner.invoke(app, ["inspect", str(tmp_path), "--audit"])
    assert not_output.exit_code == 2 and "not a transplant output" in not_output.output
    assert "Traceback" not in not_output.output
    with_donor = runner.invoke(app, ["inspect", str(omp_output), str(tmp_path), "--audit"])
    assert with_donor.exit_code == 2 and "pass only the output directory" in with_donor.output
    no_donor = runner.invoke(app, ["inspect", str(omp_output)])
    assert no_donor.exit_code == 2 and "missing DONOR" in no_donor.output


def test_audit_names_a_moved_base(omp_output, fresh_copy):
    moved = fresh_copy(omp_output)
    report = json.loads((moved / "report.json").read_text())
    report["base"]["path"] = str(moved / "gone")
    (moved / "report.json").write_text(json.dumps(report))
    with pytest.raises(TokenSurgeonError, match="not a directory any more"):
        audit_output(moved)


def test_transplant_prints_a_line_when_rows_are_flagged():
    """The terminal shows the audit when it flags anything (a supply-chain check nobody sees is none)."""
    from rich.console import Console

    from tokensurgeon.cli.render import print_transplant
    from tokensurgeon.report.models import TransplantReport

    audit = {"checked": 10, "flagged": 2, "counts": {"nonfinite": 1, "norm": 2, "gain": 0}, "checks": [], "tokens": []}
    report = TransplantReport(version="x", base={}, donor={}, output={"path": "out", "rows": 12},
                              method={"name": "omp"}, counts={}, timings={}, audit=audit)
    console = Console(record=True, width=200)
    print_transplant(console, report)
    assert "audit: 2 of 10 computed rows flagged (nonfinite 1, norm 2)" in console.export_text()
    report.audit = audit | {"flagged": 0}
    console = Console(record=True, width=200)
    print_transplant(console, report)
    assert "audit:" not in console.export_text()
