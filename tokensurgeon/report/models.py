"""The transplant report: what was done, to what, and how much quality survived.

One dataclass rendered three ways (markdown.py writes them): report.json for scripts, report.md
and report.html for people; provenance.jsonl beside it says where each donor row came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..evaluation.rows import EvalRow


class ReportWarning(str):
    """A warning's text (what report.json, report.md and the terminal show) with its kind, which
    views sort and style by: "number-scheme", "fallback", "tokenizer", "draft", "nonfinite", "audit"."""

    kind: str

    def __new__(cls, text: str, kind: str) -> "ReportWarning":
        warning = super().__new__(cls, text)
        warning.kind = kind
        return warning

    def __reduce__(self):  # copies (dataclasses.asdict deep-copies) keep the kind
        return ReportWarning, (str(self), self.kind)

    @classmethod
    def all(cls, kind: str, texts: list[str]) -> list["ReportWarning"]:
        return [cls(text, kind) for text in texts]


@dataclass
class TransplantReport:
    version: str
    base: dict[str, Any]
    donor: dict[str, Any]
    output: dict[str, Any]
    method: dict[str, Any]
    counts: dict[str, int]
    timings: dict[str, float]
    warnings: list[ReportWarning] = field(default_factory=list)
    evaluation: list[EvalRow] = field(default_factory=list)
    norms: dict[str, Any] = field(default_factory=dict)  # pipeline.assemble.row_norm_histograms
    residuals: dict[str, Any] = field(default_factory=dict)  # pipeline.assemble.new_row_departures
    chat: dict[str, Any] = field(default_factory=dict)  # pipeline.chat.ChatTurn: template, end of turn, one turn
    audit: dict[str, Any] = field(default_factory=dict)  # evaluation.audit.AuditReport: flagged computed rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


