"""The transplant report written out: report.json, report.md, report.html and provenance.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .html import render_html
from .models import TransplantReport


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
        lines += [f"| {row.text} | {row.bytes:,} | {row.base_bpb:.4f} | {row.patched_bpb:.4f} | "
                  f"{row.ratio:.3f} | {row.new_token_share:.1%} | {row.boundary_agreement:.1%} |"
                  for row in report.evaluation]
    if report.norms.get("new_median") is not None:
        lines += ["", "## New rows", "", f"- median L2 norm: new {report.norms['new_median']:.4f}, shared "
                  f"{report.norms['shared_median']:.4f}"]
        if report.residuals.get("max"):
            lines.append(f"- worst by {report.residuals['measure']}: " + ", ".join(
                f"`{t['token']!r}` {t['value']:.3f}" for t in report.residuals["tokens"][:5]))
    lines += chat_markdown(report.chat)
    lines += audit_markdown(report.audit)
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {warning}" for warning in report.warnings]
    lines += ["", "## Timings (s)", ""] + [f"- {phase}: {seconds:.2f}" for phase, seconds in report.timings.items()]
    lines += ["", "## Hashes (sha256 of the embedding tensors)", "",
              f"- base embed: `{report.base['embed_sha256']}`", f"- output embed: `{report.output['embed_sha256']}`"]
    if report.output.get("head_sha256"):
        lines.append(f"- output head: `{report.output['head_sha256']}`")
    return "\n".join(lines) + "\n"


def chat_markdown(chat: dict[str, Any]) -> list[str]:
    """The chat section: whose template the output carries, the token that ends a turn, one rendered turn."""
    if not chat:
        return []
    if chat.get("template") is None:
        return ["", "## Chat", "", "- no chat template: the output is a base (completion) model"]
    stop = (f"`{chat['end_of_turn']}` (id {chat['end_of_turn_id']}, in eos_token_id)" if chat.get("end_of_turn")
            else "not found (eos_token_id unchanged)")
    lines = ["", "## Chat", "", f"- template: the {chat['template']}'s", f"- end of turn: {stop}"]
    if chat.get("rendered"):
        lines += ["- one turn, rendered:", "", "```", chat["rendered"].rstrip("\n"), "```"]
    return lines


def audit_markdown(audit: dict[str, Any], listed: int = 10) -> list[str]:
    """The audit section: flagged computed rows per reason (docs/audit.md) and the worst of them."""
    if not audit:
        return []
    counts = ", ".join(f"{reason} {count:,}" for reason, count in audit["counts"].items())
    lines = ["", "## Audit", "", f"- {audit['flagged']:,} of {audit['checked']:,} computed rows flagged ({counts}); "
             f"checks: {', '.join(audit['checks'])}"]
    lines += [f"- `{token['token']!r}` (id {token['id']}): {', '.join(token['reasons'])}; "
              + ", ".join(f"{name} {value:g}" for name, value in token["scores"].items())
              for token in audit["tokens"][:listed]]
    return lines


def comparison_markdown(comparison: Any) -> str:
    """The ranked methods of a compare run (compare.CompareReport), as a markdown section."""
    texts = [row.text for row in comparison.texts]
    lines = ["## Method comparison", "", f"Ranked by {comparison.ranking}; this checkpoint is `{comparison.best}`.",
             "", "| rank | method | " + " | ".join(f"{t} bpb" for t in texts) + " | ratio | time (s) | peak RSS increase |",
             "|---:|---|" + "---:|" * (len(texts) + 3),
             "| | base | " + " | ".join(f"{row.base_bpb:.4f}" for row in comparison.texts) + " | 1.000 | | |"]
    for rank, entry in enumerate(comparison.entries, 1):
        if entry.status != "ok":
            continue
        memory = f"{entry.peak_rss_increase / 1e6:,.0f} MB" if entry.peak_rss_increase is not None else "n/a"
        lines.append(f"| {rank} | {entry.method} | " + " | ".join(f"{row.patched_bpb:.4f}" for row in entry.evaluation)
                     + f" | {entry.score:.3f} | {entry.seconds:.1f} | {memory} |")
    skipped = [entry for entry in comparison.entries if entry.status != "ok"]
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- `{entry.method}`: {entry.reason}" for entry in skipped]
    return "\n".join(lines) + "\n"


def write_report(report: TransplantReport, out_dir: Path, provenance: Iterable[dict[str, Any]] | None,
                 comparison: Any = None) -> None:
    """report.json, report.md, report.html, and provenance.jsonl unless provenance is None (kept as written).

    comparison (compare.CompareReport) adds the ranked methods to the markdown and HTML, and compare.json.
    """
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    markdown = render_markdown(report)
    if comparison is not None:
        (out_dir / "compare.json").write_text(json.dumps(comparison.to_dict(), indent=2, ensure_ascii=False) + "\n")
        markdown += "\n" + comparison_markdown(comparison)
    (out_dir / "report.md").write_text(markdown)
    (out_dir / "report.html").write_text(render_html(report, comparison), encoding="utf-8")
    if provenance is not None:
        encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps builds one per call
        with open(out_dir / "provenance.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(encode(row) + "\n" for row in provenance)
