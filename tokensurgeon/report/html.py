"""report.html: the transplant report as one self-contained page (inline CSS and SVG charts).

No scripts, fonts, images or links to fetch: the file opens offline, can be mailed or attached to
a model card, and shows the same numbers as report.json. Panels: vocabulary overlap, the ranked
methods (compare runs), bits per byte before and after per text, norms of shared vs new rows, the
new tokens approximated worst, and the warnings (number schemes first).
"""

from __future__ import annotations

import html
from typing import Any

from ..evaluation.rows import geometric_mean
from .models import TransplantReport

BASE_COLOR, PATCHED_COLOR = "#4c78a8", "#f58518"
SHARED_COLOR, NEW_COLOR, BEST_COLOR = "#4c78a8", "#e45756", "#54a24b"
KIND_COLORS = {"exact": "#4c78a8", "bytes": "#72b7b2", "special-role": "#b279a2", "special-content": "#ff9da6",
               "new": NEW_COLOR, "new-special": "#9d755d", "padding": "#bab0ac"}
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin:0 0 10px}
.sub{color:#5a6272;margin:0 0 18px;font-size:14px;word-break:break-all}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:16px 20px;margin:0 0 16px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:0 0 16px}
.card{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:10px 16px;min-width:150px}
.card b{display:block;font-size:22px} .card span{color:#5a6272;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin-top:8px} td,th{padding:3px 10px;border-bottom:1px solid #eef0f3}
th{text-align:left;color:#5a6272;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#5a6272;font-size:13px} .warn{background:#fff6e5;border-left:4px solid #f2a600;padding:6px 10px;margin:6px 0}
.warn.num{background:#fdecea;border-left-color:#e45756} code{font-size:12px}
svg text{font-family:system-ui,sans-serif}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _legend(items: list[tuple[str, str]], x: float, y: float) -> str:
    out, offset = [], x
    for label, color in items:
        out.append(f'<rect x="{offset:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{color}"/>'
                   f'<text x="{offset + 16:.1f}" y="{y:.1f}" font-size="12">{_e(label)}</text>')
        offset += 28 + 7 * len(label)
    return "".join(out)


def grouped_bars(categories: list[str], series: list[tuple[str, str, list[float]]], notes: list[str],
                 width: int = 1000, height: int = 300) -> str:
    """Vertical bars, one group per category, one bar per series; notes (e.g. ratios) above each group."""
    top = max((v for _, _, values in series for v in values), default=1.0) or 1.0
    left, bottom, plot_h = 50, 40, height - 90
    group_w = (width - left - 10) / max(len(categories), 1)
    bar_w = min(60.0, group_w * 0.8 / max(len(series), 1))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             _legend([(name, color) for name, color, _ in series], left, 16)]
    for tick in range(5):
        value = top * tick / 4
        y = height - bottom - plot_h * tick / 4
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e8ec"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{value:.2f}</text>')
    for i, category in enumerate(categories):
        x0 = left + i * group_w + (group_w - bar_w * len(series)) / 2
        for j, (name, color, values) in enumerate(series):
            h = plot_h * values[i] / top
            parts.append(f'<rect x="{x0 + j * bar_w:.1f}" y="{height - bottom - h:.1f}" width="{bar_w - 2:.1f}" '
                         f'height="{h:.1f}" fill="{color}"><title>{_e(category)} {_e(name)}: {values[i]:.4f}'
                         f'</title></rect>')
        center = left + (i + 0.5) * group_w
        peak = max(values[i] for _, _, values in series)
        parts.append(f'<text x="{center:.1f}" y="{height - bottom - plot_h * peak / top - 6:.1f}" font-size="12" '
                     f'text-anchor="middle" font-weight="600">{_e(notes[i])}</text>'
                     f'<text x="{center:.1f}" y="{height - bottom + 16:.1f}" font-size="12" '
                     f'text-anchor="middle">{_e(category)}</text>')
    return "".join(parts) + "</svg>"


def horizontal_bars(labels: list[str], values: list[float], colors: list[str], fmt: str = "{:.3f}",
                    width: int = 1000, row: int = 24, reference: float | None = None) -> str:
    """One horizontal bar per label; a dashed line at reference (e.g. 1.0 = no loss)."""
    left, height = 150, row * len(labels) + 30
    top = max(values + ([reference] if reference else []), default=1.0) or 1.0
    scale = (width - left - 80) / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, (label, value, color) in enumerate(zip(labels, values, colors)):
        y = 8 + i * row
        parts.append(f'<text x="{left - 8}" y="{y + row * 0.6:.1f}" font-size="12" text-anchor="end">{_e(label)}</text>'
                     f'<rect x="{left}" y="{y:.1f}" width="{value * scale:.1f}" height="{row - 6}" fill="{color}"/>'
                     f'<text x="{left + value * scale + 6:.1f}" y="{y + row * 0.6:.1f}" font-size="12">'
                     f'{_e(fmt.format(value))}</text>')
    if reference:
        x = left + reference * scale
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="2" y2="{height - 20}" stroke="#333" stroke-dasharray="4 3"/>'
                     f'<text x="{x:.1f}" y="{height - 6}" font-size="11" text-anchor="middle">{reference:g}</text>')
    return "".join(parts) + "</svg>"


def histogram(edges: list[float], series: list[tuple[str, str, list[int]]], width: int = 1000,
              height: int = 260) -> str:
    """Overlaid histograms on shared bins, each scaled to its own peak (the counts differ by orders)."""
    left, bottom, plot_h = 50, 36, height - 80
    bins = len(edges) - 1
    bin_w = (width - left - 10) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             _legend([(f"{name} ({sum(counts):,} rows)", color) for name, color, counts in series], left, 16)]
    for name, color, counts in series:
        peak = max(counts, default=0) or 1
        for i, count in enumerate(counts):
            h = plot_h * count / peak
            if h > 0:
                parts.append(f'<rect x="{left + i * bin_w:.1f}" y="{height - bottom - h:.1f}" width="{bin_w - 1:.1f}" '
                             f'height="{h:.1f}" fill="{color}" fill-opacity="0.55"><title>{_e(name)} '
                             f'{edges[i]:.3f}-{edges[i + 1]:.3f}: {count:,}</title></rect>')
    for i in range(0, bins + 1, max(bins // 8, 1)):
        parts.append(f'<text x="{left + i * bin_w:.1f}" y="{height - bottom + 16}" font-size="11" '
                     f'text-anchor="middle">{edges[i]:.2f}</text>')
    parts.append(f'<text x="{width / 2:.0f}" y="{height - 4}" font-size="12" text-anchor="middle">'
                 f'L2 norm of the input-embedding row</text>')
    return "".join(parts) + "</svg>"


def _overlap(report: TransplantReport) -> str:
    counts = {k: v for k, v in report.counts.items() if k in KIND_COLORS and v}
    total = sum(counts.values()) or 1
    x, bar = 0.0, []
    for kind, count in counts.items():
        w = 1000 * count / total
        bar.append(f'<rect x="{x:.1f}" y="24" width="{w:.1f}" height="26" fill="{KIND_COLORS[kind]}">'
                   f'<title>{_e(kind)}: {count:,}</title></rect>')
        x += w
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="1000" height="56" role="img">'
           f'{_legend([(k, KIND_COLORS[k]) for k in counts], 0, 14)}{"".join(bar)}</svg>')
    rows = "".join(f'<tr><td>{_e(kind)}</td><td class="n">{count:,}</td></tr>' for kind, count in report.counts.items())
    return (f'<section id="overlap"><h2>Vocabulary overlap</h2><p class="note">Every donor row by how it was '
            f'filled: shared tokens are copied bit for bit from the base; new tokens are computed by '
            f'<code>{_e(report.method["name"])}</code>.</p>{svg}<table><tr><th>how</th><th>rows</th></tr>{rows}'
            f'</table></section>')


def _comparison(comparison: Any) -> str:
    ok = [entry for entry in comparison.entries if entry.status == "ok"]
    svg = horizontal_bars([e.method for e in ok], [e.score for e in ok],
                          [BEST_COLOR if e.method == comparison.best else PATCHED_COLOR for e in ok], reference=1.0)
    head = "".join(f"<th>{_e(row.text)}</th>" for row in comparison.texts)
    rows = ['<tr><td></td><td>base</td>' + "".join(f'<td class="n">{row.base_bpb:.4f}</td>'
                                                   for row in comparison.texts) + '<td class="n">1.000</td><td></td><td></td></tr>']
    for rank, e in enumerate(ok, 1):
        memory = f"{e.peak_rss_increase / 1e6:,.0f} MB" if e.peak_rss_increase is not None else "n/a"
        rows.append(f'<tr><td class="n">{rank}</td><td>{_e(e.method)}</td>'
                    + "".join(f'<td class="n">{row.patched_bpb:.4f}</td>' for row in e.evaluation)
                    + f'<td class="n">{e.score:.3f}</td><td class="n">{e.seconds:.1f}</td><td class="n">{memory}</td></tr>')
    skipped = "".join(f"<li><code>{_e(e.method)}</code>: {_e(e.reason)}</li>"
                      for e in comparison.entries if e.status != "ok")
    return (f'<section id="compare"><h2>Methods, ranked</h2><p class="note">Ranked by {_e(comparison.ranking)}; '
            f'1.0 = as good as the base model with its own tokenizer. This checkpoint is '
            f'<b>{_e(comparison.best)}</b>.</p>{svg}<table><tr><th>rank</th><th>method</th>{head}<th>ratio</th>'
            f'<th>time (s)</th><th>peak RSS increase</th></tr>{"".join(rows)}</table>'
            + (f'<p class="note">Skipped:</p><ul class="note">{skipped}</ul>' if skipped else "") + "</section>")


def _bits_per_byte(report: TransplantReport) -> str:
    if not report.evaluation:
        return ('<section id="bpb"><h2>Bits per byte</h2><p class="note">No evaluation text was given '
                '(<code>--eval-text</code>).</p></section>')
    rows = report.evaluation
    svg = grouped_bars([row.text for row in rows],
                       [("base (own tokenizer)", BASE_COLOR, [row.base_bpb for row in rows]),
                        ("patched (donor tokenizer)", PATCHED_COLOR, [row.patched_bpb for row in rows])],
                       [f"x{row.ratio:.2f}" for row in rows])
    table = "".join(f'<tr><td>{_e(r.text)}</td><td class="n">{r.bytes:,}</td><td class="n">{r.base_bpb:.4f}'
                    f'</td><td class="n">{r.patched_bpb:.4f}</td><td class="n">{r.ratio:.3f}</td><td class="n">'
                    f'{r.new_token_share:.1%}</td><td class="n">{r.boundary_agreement:.1%}</td></tr>' for r in rows)
    return (f'<section id="bpb"><h2>Bits per byte, before and after</h2><p class="note">Lower is better; the label '
            f'over each pair is patched / base. Boundary agreement is the share of the donor\'s token boundaries '
            f'the base tokenizer also has: low agreement is a floor no method removes.</p>{svg}<table><tr><th>text'
            f'</th><th>bytes</th><th>base bpb</th><th>patched bpb</th><th>ratio</th><th>donor tokens new</th>'
            f'<th>boundary agreement</th></tr>{table}</table></section>')


def _norms(report: TransplantReport) -> str:
    norms = report.norms
    if not norms:
        return ""
    svg = histogram(norms["edges"], [("shared rows (copied)", SHARED_COLOR, norms["shared"]),
                                     ("new rows (computed)", NEW_COLOR, norms["new"])])
    medians = ", ".join(f"{name} {norms[key]:.3f}" for name, key in (("shared", "shared_median"),
                                                                      ("new", "new_median")) if norms[key] is not None)
    return (f'<section id="norms"><h2>Row norms: new vs shared</h2><p class="note">Each histogram is scaled to its '
            f'own peak. New rows far outside the shared rows\' range get too much (or too little) weight in '
            f'the model. Medians: {_e(medians)}.</p>{svg}</section>')


def _residuals(report: TransplantReport) -> str:
    residuals = report.residuals
    if not residuals or not residuals.get("tokens"):
        return ('<section id="residuals"><h2>Worst-approximated new tokens</h2><p class="note">Nothing to show: '
                'no new token has base pieces to compare with.</p></section>')
    if residuals["max"] == 0:
        body = '<p class="note">Every new row equals its pieces\' mean (this is the subword-mean row), so nothing ' \
               'was approximated beyond it.</p>'
    else:
        top = residuals["max"] or 1.0
        body = "<table><tr><th>donor id</th><th>token</th><th>value</th><th></th></tr>" + "".join(
            f'<tr><td class="n">{t["id"]}</td><td><code>{_e(repr(t["token"]))}</code></td><td class="n">'
            f'{t["value"]:.3f}</td><td><svg width="300" height="12"><rect width="{300 * t["value"] / top:.1f}" '
            f'height="12" fill="{NEW_COLOR}"/></svg></td></tr>' for t in residuals["tokens"]) + "</table>"
    return (f'<section id="residuals"><h2>Worst-approximated new tokens</h2><p class="note">Measure: '
            f'{_e(residuals["measure"])}.</p>{body}</section>')


def _audit(report: TransplantReport, listed: int = 10) -> str:
    """Flagged computed rows per reason and the worst of them (docs/audit.md), as report.md lists them."""
    audit = report.audit
    if not audit:
        return ""
    counts = ", ".join(f"{reason} {count:,}" for reason, count in audit["counts"].items())
    rows = "".join(f'<tr><td class="n">{t["id"]}</td><td><code>{_e(repr(t["token"]))}</code></td>'
                   f'<td>{_e(", ".join(t["reasons"]))}</td><td>'
                   + _e(", ".join(f"{name} {value:g}" for name, value in t["scores"].items())) + "</td></tr>"
                   for t in audit["tokens"][:listed])
    table = f"<table><tr><th>donor id</th><th>token</th><th>reasons</th><th>scores</th></tr>{rows}</table>" if rows else ""
    return (f'<section id="audit"><h2>Audit</h2><p class="note">{audit["flagged"]:,} of {audit["checked"]:,} '
            f'computed rows flagged ({_e(counts)}); checks: {_e(", ".join(audit["checks"]))}.</p>{table}</section>')


def _warnings(report: TransplantReport) -> str:
    if not report.warnings:
        return '<section id="warnings"><h2>Warnings</h2><p class="note">None.</p></section>'
    scheme = [w for w in report.warnings if getattr(w, "kind", None) == "number-scheme"]
    items = "".join(f'<div class="warn{" num" if w in scheme else ""}">{_e(w)}</div>'
                    for w in scheme + [w for w in report.warnings if w not in scheme])
    return f'<section id="warnings"><h2>Warnings</h2>{items}</section>'


def render_html(report: TransplantReport, comparison: Any = None) -> str:
    """The whole page; comparison (compare.CompareReport) adds the ranked-methods panel."""
    ratios = [row.ratio for row in report.evaluation]
    cards = [(f"{report.counts.get('shared_tokens', 0):,}", "shared tokens (copied)"),
             (f"{report.counts.get('computed', 0):,}", "new tokens (computed)"),
             (f"{report.output['rows']:,}", "embedding rows")]
    if ratios:
        cards.append((f"{geometric_mean(ratios):.3f}", "bpb ratio, patched / base (geometric mean, as compare ranks)"))
    cards_html = "".join(f'<div class="card"><b>{value}</b><span>{_e(label)}</span></div>' for value, label in cards)
    body = "".join([_overlap(report), _comparison(comparison) if comparison is not None else "",
                    _bits_per_byte(report), _norms(report), _residuals(report), _audit(report),
                    _warnings(report)])
    title = f"tokensurgeon report: {report.method['name']}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body><main>'
            f'<h1>{_e(title)}</h1><p class="sub">base <code>{_e(report.base["path"])}</code> '
            f'({_e(report.base["kind"])}, {report.base["vocab_size"]:,} tokens) &larr; donor '
            f'<code>{_e(report.donor["path"])}</code> ({_e(report.donor["kind"])}, {report.donor["vocab_size"]:,} tokens, '
            f'{"model" if report.donor["is_model"] else "tokenizer only"}); tokensurgeon {_e(report.version)}</p>'
            f'<div class="cards">{cards_html}</div>{body}</main></body></html>\n')
