"""The transplant audit: computed rows whose reconstruction behaves differently in the two spaces.

A computed row mixes base rows of shared tokens with weights found elsewhere (OMP: fitted to the donor
row over the same anchors' donor rows). A donor can plant tokens whose donor row that mix reconstructs
harmlessly while the same weights give a harmful base row ("breaker tokens", arXiv 2601.00065): weights
that cancel in the donor space and add up in the base space, or anchors whose donor rows point one way
and base rows another. No single score proves a row harmful; the audit flags rows that are outliers
on one of these, by robust (median/MAD) thresholds over the rows themselves, so a user looks at a short
list rather than 200k rows:

- ``nonfinite``: the row holds NaN or inf (OMP on two collinear anchors: bench/bench_audit.py), always flagged;
- ``residual``: the method left much of the donor row unexplained (methods that fit one record it);
- ``norm``: the row's L2 norm is far above the base's own rows';
- ``coefficients``: the weights' absolute sum is far above the other rows' (cancellation);
- ``gain``: base-row norm over donor-row norm far above the other rows' (donor model only);
- ``neighbours``: the row points away from the base rows of the donor row's nearest shared tokens
  (its donor-space neighbourhood mapped to the base space), far more than the other rows (donor model only);
- ``undertrained``: the donor row itself is barely trained (vocab/undertrained.py), so whatever was
  fitted to it is noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import AuditConfig
from ..methods.base import Provenance, gather_rows
from ..runtime.memory import gathered
from ..vocab.undertrained import undertrained_rows

BASE_CHECKS = ("nonfinite", "residual", "norm", "coefficients")
DONOR_CHECKS = ("gain", "neighbours", "undertrained")


@dataclass
class FlaggedToken:
    """One flagged row: donor id, spelled token, why, and its scores (raw values, not z)."""

    id: int
    token: str
    reasons: list[str]
    scores: dict[str, float]


@dataclass
class AuditReport:
    """What the audit checked and flagged. ``counts``: flagged rows per reason (a row may have several);
    ``tokens``: the worst flagged rows first, at most ``AuditConfig.listed``; ``limits``: the score each
    reason flagged beyond (a norm as a multiple of the base's median row norm)."""

    checked: int
    checks: list[str]
    counts: dict[str, int]
    flagged: int
    limits: dict[str, float] = field(default_factory=dict)
    tokens: list[FlaggedToken] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def warnings(self, share: float = AuditConfig.warn_share) -> list[str]:
        """One line when more than ``share`` of the computed rows were flagged: the method's rows are then
        suspect as a whole, not a few tokens (report.json lists them under audit)."""
        if not self.checked or self.flagged <= share * self.checked:
            return []
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in self.counts.items() if count)
        return [f"the audit flagged {self.flagged:,} of {self.checked:,} computed rows "
                f"({self.flagged / self.checked:.0%}; {reasons}): check the output before use (evaluate), "
                "or try another --method"]


@dataclass
class AuditInputs:
    """The rows to audit and the matrices they came from.

    Attributes:
        new_ids: donor ids of the computed rows.
        rows: (n, d) the computed base-space rows, in new_ids order.
        provenance: how each row was made (sources are base ids, weights their coefficients).
        spellings: each computed token, spelled for people (vocab.bytes.spell_bytes).
        base_embed: (V_base, d) the base input embedding; base_ids: its defined rows.
        anchor_donor, anchor_base: the ordinary shared tokens' donor and base ids, pairwise.
        donor_embed: (V_donor, d_donor) when the donor is a model, else None (donor-space checks skipped).
        donor_byte_fallback: the donor's <0xNN> ids (counted as under-trained, as for the base).
        base_norms: the L2 norms of base_embed[base_ids] where the caller has them (else they are read).
    """

    new_ids: list[int]
    rows: torch.Tensor
    provenance: list[Provenance]
    spellings: list[str]
    base_embed: torch.Tensor
    base_ids: list[int]
    anchor_donor: list[int]
    anchor_base: list[int]
    donor_embed: torch.Tensor | None = None
    donor_byte_fallback: tuple[int, ...] = ()
    base_norms: torch.Tensor | None = None


def robust_z(values: torch.Tensor, reference: torch.Tensor | None = None, *,
             min_spread: float) -> tuple[torch.Tensor, float, float]:
    """(values - median) / (1.4826 MAD) of reference (default: values themselves), NaN kept, with the
    median and the spread; the spread is at least min_spread, so a reference of near-equal values does
    not flag every small difference."""
    reference = values if reference is None else reference
    reference = reference[reference.isfinite()]
    if not reference.numel():
        return torch.full_like(values, float("nan")), float("nan"), min_spread
    median = float(reference.median())
    spread = max(1.4826 * float((reference - median).abs().median()), min_spread)
    return (values - median) / spread, median, spread


def weight_sums(provenance: list[Provenance]) -> torch.Tensor:
    """Each row's sum |w| (NaN for a row without weights)."""
    return torch.tensor([float(np.abs(np.asarray(p.weights, dtype=np.float64)).sum()) if len(p.weights) else np.nan
                         for p in provenance], dtype=torch.float32)


def norms_of(matrix: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """L2 norms of matrix[ids], read a block of rows at a time."""
    norms = torch.zeros(len(ids))
    for positions, rows in gathered(matrix, ids):
        norms[positions.cpu()] = torch.linalg.vector_norm(rows.float(), dim=1).cpu()
    return norms


def neighbour_agreement(donor: torch.Tensor, target_ids: list[int], rows: torch.Tensor, anchor_donor: torch.Tensor,
                        anchor_base: torch.Tensor, *, k: int, block: int) -> torch.Tensor:
    """Per row, the cosine between the row and the base-space image of its target's neighbourhood: the mean
    unit base row of the k anchors nearest the target (donor[target_ids], cosine, donor space). Anchors are
    given as rows of the two spaces, pairwise. Read a block of rows at a time: a draft has 200k of them.
    (Top-k overlap of the two neighbourhoods is no measure: on P1 it is zero for 63% of the clean OMP rows.)"""
    unit = torch.nn.functional.normalize
    anchor_donor, anchor_base = unit(anchor_donor.float(), dim=1), unit(anchor_base.float(), dim=1)
    k = min(k, anchor_donor.shape[0])
    agreement = torch.zeros(len(target_ids))
    for start in range(0, len(target_ids), block):
        targets = gather_rows(donor, target_ids[start:start + block])
        near = (unit(targets.float(), dim=1) @ anchor_donor.T).topk(k, dim=1).indices
        image = unit(anchor_base[near].mean(dim=1), dim=1)  # (block, d)
        agreement[start:start + block] = (unit(rows[start:start + block].float(), dim=1) * image).sum(dim=1)
    return agreement


def donor_scores(inputs: AuditInputs, row_norms: torch.Tensor, options: AuditConfig) -> dict[str, torch.Tensor]:
    """gain, neighbours and undertrained scores (NaN where a row has no donor row)."""
    donor = inputs.donor_embed
    n = len(inputs.new_ids)
    has_row = torch.tensor([i < donor.shape[0] for i in inputs.new_ids], dtype=torch.bool)
    inside = [i for i in inputs.new_ids if i < donor.shape[0]]
    target_norms = norms_of(donor, inside)
    gain = torch.full((n,), float("nan"))
    gain[has_row] = row_norms[has_row] / target_norms.clamp(min=1e-12)
    picked = sorted(range(len(inputs.anchor_donor)), key=inputs.anchor_donor.__getitem__)[:options.anchors]
    agreement = torch.full((n,), float("nan"))
    if picked:  # the lowest donor ids: the most frequent merges, trained well in both models
        rows = inputs.rows if bool(has_row.all()) else inputs.rows[has_row]
        agreement[has_row] = neighbour_agreement(
            donor, inside, rows, gather_rows(donor, [inputs.anchor_donor[a] for a in picked]),
            gather_rows(inputs.base_embed, [inputs.anchor_base[a] for a in picked]),
            k=options.neighbours, block=options.block)
    weak = undertrained_rows(donor, inputs.donor_byte_fallback)
    median = norms_of(donor, list(range(donor.shape[0]))).median().clamp(min=1e-12)
    undertrained = torch.full((n,), float("nan"))
    undertrained[has_row] = target_norms / median
    flags = torch.tensor([i in weak for i in inputs.new_ids], dtype=torch.bool)
    undertrained[~flags & has_row] = float("nan")  # only flagged rows carry the score
    return {"gain": gain, "neighbours": agreement, "undertrained": undertrained}


def audit_rows(inputs: AuditInputs, options: AuditConfig = AuditConfig()) -> AuditReport:
    """Score every computed row, flag the outliers, and list the worst.

    Args:
        inputs: rows, provenance and matrices (AuditInputs).
        options: thresholds and sizes (config.AuditConfig).
    Returns:
        An AuditReport; donor-space checks are listed in ``checks`` only when the donor model was given.
    """
    n = len(inputs.new_ids)
    row_norms, nonfinite = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
    for start in range(0, n, options.block):  # blocks: no float32 copy of a draft's 200k rows
        rows = inputs.rows[start:start + options.block].float()
        row_norms[start:start + len(rows)] = torch.linalg.vector_norm(rows, dim=1).cpu()
        nonfinite[start:start + len(rows)] = ~rows.isfinite().all(dim=1).cpu()
    base_norms = inputs.base_norms if inputs.base_norms is not None else norms_of(inputs.base_embed, inputs.base_ids)
    base_median = float(base_norms.median()) if base_norms.numel() else 1.0
    scores = {"nonfinite": torch.where(nonfinite, 1.0, float("nan")),
              "residual": torch.tensor([float("nan") if p.residual is None else p.residual for p in inputs.provenance]),
              "norm": row_norms / base_median, "coefficients": weight_sums(inputs.provenance)}
    # each score's outlier side is high (a log scale for ratios), except neighbour agreement, which flags when low
    log_scale = {"norm", "coefficients", "gain"}
    reference = {"norm": base_norms / base_median}  # the base's own rows; the others against the computed rows
    checks = list(BASE_CHECKS)
    if inputs.donor_embed is not None:
        scores |= donor_scores(inputs, row_norms, options)
        checks += list(DONOR_CHECKS)
    z, limits = {"nonfinite": torch.where(nonfinite, float("inf"), 0.0)}, {}  # listed first
    for reason in [r for r in checks if r in log_scale or r == "residual"]:
        values, against = scores[reason], reference.get(reason)
        if reason in log_scale:
            values, against = values.clamp(min=1e-12).log(), None if against is None else against.clamp(min=1e-12).log()
        z[reason], median, spread = robust_z(values, against, min_spread=options.min_spread)
        limit = median + options.z * spread
        if limit == limit:  # NaN when no row has the score (no residuals): report.json stays valid JSON
            limits[reason] = round(float(np.exp(limit)) if reason in log_scale else limit, 4)
    if inputs.donor_embed is not None:  # cosines are bounded: their own z, on the low side, in options.z's scale
        low, median, spread = robust_z(scores["neighbours"], min_spread=options.min_spread)
        z["neighbours"] = -low * options.z / options.neighbour_z
        limits["neighbours"] = round(median - options.neighbour_z * spread, 4)
        z["undertrained"] = torch.where(scores["undertrained"].isfinite(), 2 * options.z, 0.0)
    flags = {reason: torch.nan_to_num(z[reason], nan=0.0) > options.z for reason in checks}
    flagged = torch.stack([flags[reason] for reason in checks]).any(dim=0)
    worst = torch.stack([torch.nan_to_num(z[reason], nan=0.0) for reason in checks]).amax(dim=0)
    order = [row for row in worst.argsort(descending=True, stable=True).tolist() if flagged[row]][:options.listed]
    tokens = [FlaggedToken(inputs.new_ids[row], inputs.spellings[row], [r for r in checks if flags[r][row]],
                           {r: round(float(scores[r][row]), 4) for r in checks if scores[r][row].isfinite()})
              for row in order]
    return AuditReport(checked=n, checks=checks, counts={r: int(flags[r].sum()) for r in checks},
                       flagged=int(flagged.sum()), limits=limits, tokens=tokens)
