"""The audit on planted rows: OMP run on a donor whose new rows are clean sparse mixes of anchors, except
for planted "breaker" rows (arXiv 2601.00065): a planted anchor's donor row is shrunk to almost nothing
(its contribution nearly cancels in the donor space) and the planted token's donor row is that anchor's
row scaled back up to an ordinary norm. OMP reconstructs the planted row exactly in the donor space, with
a huge coefficient, which replays the anchor's ordinary base row a hundredfold."""

from __future__ import annotations

import pytest
import torch

from tokensurgeon.config import AuditConfig
from tokensurgeon.evaluation.audit import AuditInputs, AuditReport, audit_rows, robust_z, weight_sums
from tokensurgeon.methods import InitContext, Provenance, get_init_method
from tokensurgeon.vocab.alignment import Alignment
from tokensurgeon.vocab.tokenizer import Vocabulary

PLANTED = 12
SHARED, NEW = 2000, 600
SCALE = 100.0  # the planted anchor's donor row is 1/SCALE of an ordinary one


def vocabulary(size: int) -> Vocabulary:
    tokens = tuple(f"t{i}" for i in range(size))
    return Vocabulary("plain", "plain", tokens, tuple(t.encode() for t in tokens), {}, {}, frozenset())


@pytest.fixture(scope="module")
def world():
    """An OMP run (k=8, selection on unit rows: on rows as stored the shrunk anchor is never picked) over a donor with PLANTED breaker rows among NEW new tokens; the first SHARED donor
    ids are shared with the base, whose rows are a linear map of the donor rows (the spaces agree)."""
    alignment = Alignment(tuple(range(SHARED)) + (-1,) * NEW, ("exact",) * SHARED + ("new",) * NEW)
    generator = torch.Generator().manual_seed(0)
    donor = torch.randn(SHARED + NEW, 64, generator=generator)
    mix = torch.randint(0, SHARED - PLANTED, (NEW, 3), generator=generator)  # planted anchors: the last ids
    weights = torch.rand(NEW, 3, generator=generator) + 0.5
    mixed = torch.einsum("bk,bkd->bd", weights, donor[mix])
    donor[SHARED:] = mixed * (donor[mix[:, 0]].norm(dim=1) / mixed.norm(dim=1)).unsqueeze(1)  # ordinary norms
    base = torch.randn(SHARED + 100, 16, generator=generator)  # 100 base-only rows
    base[:SHARED] = donor[:SHARED] @ (torch.randn(64, 16, generator=generator) / 8)
    planted = list(range(SHARED, SHARED + NEW, NEW // PLANTED))[:PLANTED]
    for token, anchor in zip(planted, range(SHARED - PLANTED, SHARED)):
        donor[anchor] /= SCALE  # nearly nothing in the donor space; its base row stays ordinary
        donor[token] = donor[anchor] * SCALE  # an ordinary donor row, fitted by one huge coefficient
    ctx = InitContext(alignment, vocabulary(base.shape[0]), vocabulary(SHARED + NEW), base, None, donor, None,
                      torch.device("cpu"))
    result = get_init_method("omp", k=8, refresh=1, normalize_atoms=True).initialise(ctx)
    new_ids = alignment.new_ids
    inputs = AuditInputs(new_ids=new_ids, rows=result.embed, provenance=result.provenance,
                         spellings=[f"t{i}" for i in new_ids], base_embed=base, base_ids=list(range(base.shape[0])),
                         anchor_donor=list(range(SHARED)), anchor_base=list(range(SHARED)), donor_embed=donor)
    return inputs, set(planted)


def test_planted_rows_are_reconstructed_in_the_donor_space_and_blow_up_in_the_base(world):
    """The premise: OMP fits the planted donor rows (small residual) while their base rows are huge."""
    inputs, planted = world
    rows = [row for row, i in enumerate(inputs.new_ids) if i in planted]
    assert all(inputs.provenance[row].residual < 0.05 for row in rows)
    norms = inputs.rows.norm(dim=1)
    assert norms[rows].min() > 10 * norms.median()


def test_audit_flags_every_planted_row_and_few_clean_ones(world):
    inputs, planted = world
    report = audit_rows(inputs, AuditConfig(listed=10_000))
    flagged = {token.id for token in report.tokens}
    assert planted <= flagged
    clean_flagged = flagged - planted
    assert len(clean_flagged) <= 0.01 * (report.checked - len(planted)), sorted(clean_flagged)[:20]
    by_id = {token.id: token for token in report.tokens}
    for token in planted:
        assert {"norm", "coefficients", "gain"} <= set(by_id[token].reasons)
    assert report.counts["norm"] >= len(planted) and report.flagged == len(flagged)
    assert report.checks == ["nonfinite", "residual", "norm", "coefficients", "gain", "neighbours", "undertrained"]


def test_without_a_donor_model_only_base_checks_run_and_still_catch_the_blow_up(world):
    inputs, planted = world
    base_only = AuditInputs(**{**inputs.__dict__, "donor_embed": None})
    report = audit_rows(base_only, AuditConfig(listed=10_000))
    assert report.checks == ["nonfinite", "residual", "norm", "coefficients"]
    assert planted <= {token.id for token in report.tokens}


def test_undertrained_donor_rows_are_flagged(world):
    inputs, _ = world
    donor = inputs.donor_embed.clone()
    weak = inputs.new_ids[5]
    donor[weak] *= 0.01
    report = audit_rows(AuditInputs(**{**inputs.__dict__, "donor_embed": donor}), AuditConfig(listed=10_000))
    assert weak in {token.id for token in report.tokens if "undertrained" in token.reasons}


def test_robust_z_and_weight_sums_by_hand():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, MAD 1 -> spread 1.4826
    z, median, spread = robust_z(values, min_spread=0.0)
    assert median == 3.0 and spread == pytest.approx(1.4826)
    assert z[-1].item() == pytest.approx(97 / 1.4826)
    assert robust_z(torch.ones(4), min_spread=0.5)[2] == 0.5  # equal values: the floor, no division by zero
    sums = weight_sums([Provenance("omp", [1, 2], [0.5, -2.0]), Provenance("mean"), Provenance("x", [3], [1.5])])
    assert sums[0].item() == 2.5 and sums[1].isnan() and sums[2].item() == 1.5


def test_rows_without_residuals_keep_the_report_valid_json(world):
    """A method that fits nothing (subword-mean) records no residual: no NaN limit in report.json."""
    import json

    inputs, _ = world
    plain = [Provenance("subword-mean", p.sources, p.weights) for p in inputs.provenance]
    report = audit_rows(AuditInputs(**{**inputs.__dict__, "provenance": plain, "donor_embed": None}))
    assert "residual" not in report.limits and report.counts["residual"] == 0
    json.dumps(report.to_dict(), allow_nan=False)


def test_nonfinite_rows_are_flagged_first(world):
    """OMP writes NaN rows when a donor plants two collinear anchors (bench/bench_audit.py, duplicate): NaN
    compares false with every limit, so it needs its own reason."""
    inputs, planted = world
    rows = inputs.rows.clone()
    rows[7] = float("nan")
    rows[9, 3] = float("inf")
    report = audit_rows(AuditInputs(**{**inputs.__dict__, "rows": rows}), AuditConfig(listed=10_000))
    assert report.counts["nonfinite"] == 2
    assert {token.id for token in report.tokens[:2]} == {inputs.new_ids[7], inputs.new_ids[9]}
    assert all("nonfinite" in token.reasons for token in report.tokens[:2])


@pytest.mark.realmodel
def test_planted_rows_in_the_real_p1_donor():
    """bench/bench_audit.py's plant on the real pair (Gemma3-270M <- SmolLM2-135M), OMP at its defaults on the
    planted rows and 150 ordinary new tokens: cancel rows are flagged; duplicate rows stay finite (OMP's codes
    for them overflowed to NaN before the solver repaired such codes); repoint rows are not flagged
    (docs/audit.md: what it misses); at most one ordinary row is."""
    import importlib.util

    from conftest import ROOT
    from tokensurgeon.checkpoint import open_checkpoint, read_embeddings
    from tokensurgeon.vocab.pair import load_pair
    from tokensurgeon.zoo import ensure_model

    spec = importlib.util.spec_from_file_location("bench_audit", ROOT / "bench" / "bench_audit.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gemma3, smollm2 = ensure_model("gemma3-270m"), ensure_model("smollm2-135m")
    pair = load_pair(gemma3, smollm2)
    donor = read_embeddings(open_checkpoint(smollm2))[0].float()
    planted = bench.plant_rows(donor, pair.alignment, pair.donor_vocab, per_kind=4)
    donor = donor.bfloat16()  # stored as the checkpoint stores it (bench writes it so)
    every = {i for ids in planted.values() for i in ids}
    ordinary = [i for i in pair.alignment.new_ids if i not in every][::20][:150]
    keep = every | set(ordinary)
    match = tuple("padding" if kind == "new" and i not in keep else kind for i, kind in enumerate(pair.alignment.match))
    alignment = Alignment(pair.alignment.source, match, pair.alignment.decompositions)
    base = read_embeddings(open_checkpoint(gemma3))[0]
    ctx = InitContext(alignment, pair.base_vocab, pair.donor_vocab, base, None, donor, None, torch.device("cpu"))
    result = get_init_method("omp").initialise(ctx)
    anchors = [i for i, kind in enumerate(match) if kind in ("exact", "bytes")]
    report = audit_rows(AuditInputs(
        new_ids=alignment.new_ids, rows=result.embed, provenance=result.provenance,
        spellings=[str(pair.donor_vocab.tokens[i]) for i in alignment.new_ids], base_embed=base,
        base_ids=list(range(base.shape[0])), anchor_donor=anchors, anchor_base=[alignment.source[i] for i in anchors],
        donor_embed=donor), AuditConfig(listed=10_000))
    flagged = {token.id for token in report.tokens}
    assert set(planted["cancel"]) <= flagged
    assert result.embed.isfinite().all() and report.counts["nonfinite"] == 0
    assert not set(planted["repoint"]) & flagged
    assert len(flagged - every) <= 1, flagged - every


def test_a_large_flagged_share_warns_and_a_few_flagged_rows_do_not():
    """The transplant warns when the audit flags more than AuditConfig.warn_share of the computed rows (the omp draft
    for Gemma3 that accepted no proposal: 22%), and stays quiet for a few (P1: 1 of 3,004)."""
    few = AuditReport(checked=3004, checks=["norm"], counts={"norm": 1}, flagged=1)
    many = AuditReport(checked=215_887, checks=["norm", "gain"], counts={"norm": 46_011, "gain": 0}, flagged=46_973)
    assert few.warnings() == [] and AuditReport(checked=0, checks=[], counts={}, flagged=0).warnings() == []
    assert many.warnings() == ["the audit flagged 46,973 of 215,887 computed rows (22%; norm 46,011): check the output "
                               "before use (evaluate), or try another --method"]
    assert few.warnings(share=0.0001) and not many.warnings(share=0.5)


def test_inspect_audit_prints_the_warning_a_transplant_would():
    """`inspect OUT --audit` shows the same warning line as the transplant that wrote OUT, and none for a few rows."""
    from io import StringIO

    from rich.console import Console

    from tokensurgeon.cli.render import print_audit

    def printed(report: AuditReport) -> str:
        out = StringIO()
        print_audit(Console(file=out, width=400), report)
        return out.getvalue()

    many = AuditReport(checked=215_887, checks=["norm"], counts={"norm": 46_011}, flagged=46_973)
    assert f"warning: {many.warnings()[0]}" in printed(many)
    assert "warning" not in printed(AuditReport(checked=3004, checks=["norm"], counts={"norm": 1}, flagged=1))
