"""The transplant report: what was done, to what, and how much quality survived.

One dataclass rendered three ways: report.json for scripts, report.md for people, and
provenance.jsonl with one line per donor row saying where its values came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TransplantReport:
    version: str
    base: dict[str, Any]
    donor: dict[str, Any]
    output: dict[str, Any]
    method: dict[str, Any]
    counts: dict[str, int]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    evaluation: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render_markdown(report: TransplantReport) -> str:
    lines = [
        f"# tokensurgeon transplant report (v{report.version})",
        "",
        f"- base: `{report.base['path']}` ({report.base['kind']}, {report.base['vocab_size']:,} tokens, "
        f"{'tied' if report.base['tied'] else 'untied'} embeddings, hidden {report.base['hidden_size']})",
        f"- donor: `{report.donor['path']}` ({report.donor['kind']}, {report.donor['vocab_size']:,} tokens, "
        f"{'model' if report.donor['is_model'] else 'tokenizer only'})",
        f"- output: `{report.output['path']}` ({report.output['rows']:,} embedding rows)",
        f"- method: `{report.method['name']}` {report.method['options'] or ''} seed {report.method['seed']} "
        f"on {report.method['device']}; chat template from {report.method['chat_template']}",
        "",
        "## Rows",
        "",
        "| how | rows |",
        "|---|---:|",
    ]
    lines += [f"| {kind} | {count:,} |" for kind, count in report.counts.items()]
    if report.evaluation:
        lines += ["", "## Bits per byte", "",
                  "| text | bytes | base bpb | patched bpb | ratio | new-token share | boundary agreement |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {row['text']} | {row['bytes']:,} | {row['base_bpb']:.4f} | {row['patched_bpb']:.4f} | "
                  f"{row['ratio']:.3f} | {row['new_token_share']:.1%} | {row['boundary_agreement']:.1%} |"
                  for row in report.evaluation]
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {warning}" for warning in report.warnings]
    lines += ["", "## Timings (s)", ""] + [f"- {phase}: {seconds:.2f}" for phase, seconds in report.timings.items()]
    lines += ["", "## Hashes (sha256 of the embedding tensors)", "",
              f"- base embed: `{report.base['embed_sha256']}`", f"- output embed: `{report.output['embed_sha256']}`"]
    if report.output.get("head_sha256"):
        lines.append(f"- output head: `{report.output['head_sha256']}`")
    return "\n".join(lines) + "\n"


def write_report(report: TransplantReport, out_dir: Path, provenance: list[dict[str, Any]]) -> None:
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))
    with open(out_dir / "provenance.jsonl", "w", encoding="utf-8") as handle:
        for row in provenance:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
