"""Rich views of the result dataclasses, for the CLI (the only other module that prints)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..report.models import TransplantReport
from ..vocab.overlap import OverlapReport


def print_overlap(console: Console, report: OverlapReport) -> None:
    sizes = Table("", "base", "donor", title="Tokenizers")
    sizes.add_row("path", report.base["path"], report.donor["path"])
    sizes.add_row("kind", report.base["kind"], report.donor["kind"])
    sizes.add_row("vocab size", f"{report.base['vocab_size']:,}", f"{report.donor['vocab_size']:,}")
    sizes.add_row("special tokens", f"{report.base['specials']:,}", f"{report.donor['specials']:,}")
    console.print(sizes)

    counts = Table("", "tokens", title="Overlap (by canonical bytes, specials apart)")
    counts.add_row("shared (copied)", f"{report.shared_tokens:,}")
    counts.add_row("  same string", f"{report.counts['exact']:,}")
    counts.add_row("  same bytes, other spelling", f"{report.counts['bytes']:,}")
    counts.add_row("donor-new", f"{report.new_tokens:,}")
    counts.add_row("base-only", f"{report.base_only:,}")
    counts.add_row("donor specials mapped / new",
                   f"{report.counts['special-role'] + report.counts['special-content']:,} / "
                   f"{report.counts['new-special']:,}")
    console.print(counts)

    specials = Table("donor id", "donor token", "role", "match", "base id", "base token", title="Special tokens")
    shown = [row for row in report.special_tokens if row.match != "new-special"][:20]
    for row in shown:
        specials.add_row(str(row.donor_id), row.content, row.role or "", row.match, str(row.base_id),
                         row.base_content or "")
    hidden = len(report.special_tokens) - len(shown)
    if hidden:
        specials.caption = f"{hidden} more donor specials without a base counterpart (see --json)"
    console.print(specials)

    samples = Table("donor id", "token", "base pieces", title="Sample of new tokens")
    for row in report.samples:
        pieces = " | ".join(repr(piece) for piece in row.base_pieces) or "[red](no base spelling)[/]"
        samples.add_row(str(row.donor_id), repr(row.text), pieces)
    console.print(samples)

    digits = Table("probe", "base", "donor", title="Number splitting")
    for probe, base_split, donor_split in zip(("1234567", " 2024"), report.digits["base"], report.digits["donor"]):
        digits.add_row(repr(probe), " | ".join(base_split), " | ".join(donor_split))
    console.print(digits)

    if report.texts:
        texts = Table("text", "bytes", "base bytes/token", "donor bytes/token", "donor tokens new",
                      "boundary agreement", title="Text splits")
        for stats in report.texts:
            texts.add_row(stats.label, f"{stats.n_bytes:,}", f"{stats.base_bytes_per_token:.2f}",
                          f"{stats.donor_bytes_per_token:.2f}", f"{stats.new_token_share:.1%}",
                          f"{stats.boundary_agreement:.1%}")
        console.print(texts)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def print_transplant(console: Console, report: TransplantReport) -> None:
    console.print(f"[bold green]patched checkpoint written to[/] {report.output['path']} "
                  f"({report.output['rows']:,} rows, method {report.method['name']})")
    counts = Table("how", "rows", title="Rows")
    for kind, count in report.counts.items():
        counts.add_row(kind, f"{count:,}")
    console.print(counts)
    if report.evaluation:
        table = Table("text", "base bpb", "patched bpb", "ratio", "donor tokens new", "boundary agreement",
                      title="Bits per byte")
        for row in report.evaluation:
            table.add_row(row.text, f"{row.base_bpb:.4f}", f"{row.patched_bpb:.4f}", f"{row.ratio:.3f}",
                          f"{row.new_token_share:.1%}", f"{row.boundary_agreement:.1%}")
        console.print(table)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if report.audit.get("flagged"):
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in report.audit["counts"].items() if count)
        console.print(f"[yellow]audit:[/] {report.audit['flagged']:,} of {report.audit['checked']:,} computed rows "
                      f"flagged ({reasons}): see report.md and docs/audit.md", highlight=False)
    console.print(f"report: {report.output['path']}/report.md, report.html, report.json, provenance.jsonl")


def print_compare(console: Console, report) -> None:
    """The ranked methods of a bake-off (report: compare.CompareReport)."""
    table = Table("rank", "method", *(f"{row.text}\nbpb" for row in report.texts), "ratio", "time (s)",
                  "peak RSS +", title=f"Methods ranked: {report.base} <- {report.donor}",
                  caption=f"ratio: {report.ranking}; time: method + writing the checkpoint; peak RSS +: highest "
                          "resident memory sampled during that, above what was resident before")
    table.add_row("", "base", *(f"{row.base_bpb:.4f}" for row in report.texts), "1.000", "", "")
    for rank, entry in enumerate(report.entries, 1):
        if entry.status != "ok":
            continue
        memory = f"{entry.peak_rss_increase / 1e6:,.0f} MB" if entry.peak_rss_increase is not None else "n/a"
        style = "bold green" if entry.method == report.best else None
        table.add_row(str(rank), entry.method, *(f"{row.patched_bpb:.4f} ({row.ratio:.2f})"
                                                  for row in entry.evaluation),
                      f"{entry.score:.3f}", f"{entry.seconds:.1f}", memory, style=style)
    console.print(table)
    for entry in report.entries:
        if entry.status != "ok":
            console.print(f"[yellow]skipped[/] {entry.method}: {entry.reason}", highlight=False)
    if report.out:
        console.print(f"[bold green]best ({report.best}) written to[/] {report.out} with report.md, report.html, "
                      "compare.json")


def print_scores(console: Console, results: list) -> None:
    table = Table("model", "text", "bytes", "tokens", "bytes/token", "bits/byte", title="Bits per byte")
    for result in results:
        for score in result.scores:
            table.add_row(str(result.model), score.label, f"{score.n_bytes:,}", f"{score.n_tokens:,}",
                          f"{score.bytes_per_token:.2f}", f"{score.bits_per_byte:.4f}")
    console.print(table)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return str(n)


def print_export(console: Console, result) -> None:
    """Where an export's files went (result: export.ExportResult)."""
    files = Table("file", "size", "tensors", "how", title=f"Export ({result.mode}) -> {result.out}")
    for record in result.files:
        files.add_row(record["name"], _size(record["bytes"]), str(record["tensors"]), record["how"])
    console.print(files)
    source = result.source + (f" applied to {result.base}" if result.base else "")
    dtypes = f"{result.cast:,} cast to {result.dtype}" if result.dtype else "dtypes kept"
    console.print(f"from {source}: {result.shards} shard(s), {result.tensors:,} tensors ({dtypes}), "
                  f"vocab {result.vocab_size:,} x {result.hidden_size:,}")
    linked = result.out_bytes - result.bytes_written
    console.print(f"{_size(result.out_bytes)} in {result.out}" + (f", {_size(linked)} hard-linked" if linked else "")
                  + f"; check passed: {result.checked:,} tensors as intended, config vocab_size matches the embedding")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


def print_heal(console: Console, report) -> None:
    """Bits per byte before and after a heal, held-out parts and unseen files (report: heal.HealReport)."""
    verdict = (f"best held-out state at step {report.best_step}" if report.improved
               else "no step beat the input on held-out text: output equals input")
    trained = sum(report.trainable.values())
    console.print(f"[bold green]healed checkpoint written to[/] {report.out} ({report.objective}, --train "
                  f"{report.train}: {trained:,} trainable parameters; {report.steps_run} steps "
                  f"({report.stopped_by}), {report.tokens_per_second:,.0f} tokens/s, {report.timings['total']:.0f} s "
                  f"on {report.device}; {verdict})")
    for title, rows in (("Held-out bits per byte (end of each training text)", report.texts),
                        ("Unseen files (never trained on), bits per byte", report.unseen)):
        if not rows:
            continue
        table = Table("text", "bytes", "base bpb", "before bpb", "after bpb", "ratio before", "ratio after",
                      title=title)
        for row in rows:
            base = row.base_bpb is not None
            table.add_row(row.text, f"{row.held_out_bytes:,}", f"{row.base_bpb:.4f}" if base else "-",
                          f"{row.before_bpb:.4f}", f"{row.after_bpb:.4f}",
                          f"{row.before_ratio:.3f}" if base else "-", f"{row.after_ratio:.3f}" if base else "-")
        console.print(table)
    if report.adapter:
        console.print(f"PEFT adapter: {report.adapter}")
    console.print(f"report: {report.out}/heal.json")


def print_hypernet(console: Console, record: dict) -> None:
    training, arch = record["training"], record["architecture"]
    table = Table("", "value", title=f"Hypernetwork written to {record['path']}")
    table.add_row("network", f"{arch['layers']} layers, width {arch['width']}, {arch['matrices']} head(s), "
                             f"up to {arch['max_pieces']} pieces")
    table.add_row("warm-up", f"{training['config']['steps']} steps on {training['warmup_tokens']:,} base tokens")
    table.add_row("LM stage", f"{training['config']['lm_steps']} steps" if training["lm_loss"] else "none")
    if training.get("heldout_error") is not None:
        table.add_row("held-out error (relative)",
                      f"{training['heldout_error']:.3f} (subword mean {training['heldout_error_subword_mean']:.3f}, "
                      f"{training['heldout_tokens']:,} tokens never trained on)")
    table.add_row("time", f"{training['seconds']} s on {training['device']}")
    console.print(table)


def print_speculative(console: Console, report) -> None:
    """Acceptance and throughput of each draft against the target alone (report: speculative.SpeculativeReport)."""
    figure = lambda value, spec: "-" if value is None else format(value, spec)  # noqa: E731
    table = Table("draft", "pairing", "acceptance", "accepted / round", "tokens/s", "speedup", "same output",
                  title=f"Greedy assisted generation, k={report.k}: {report.prompts} prompts x {report.prompt_tokens} "
                        f"tokens, up to {report.max_new_tokens} new ({report.device})")
    table.add_row("(target alone)", "", "", "", figure(report.baseline_tokens_per_second, ".1f"), "1.00", "")
    for run in report.runs:
        if run.error:
            table.add_row(run.draft, run.mode, f"[red]failed: {run.error}[/]", "", "", "", "")
            continue
        table.add_row(run.draft, run.mode, figure(run.acceptance_rate, ".3f"), figure(run.mean_accepted, ".2f"),
                      figure(run.tokens_per_second, ".1f"), figure(report.speedup(run), ".2f"),
                      f"{run.identical}/{report.prompts}")
    console.print(table)
    for run in report.runs:
        if run.notes and run.shared_vocabulary:
            console.print(f"[yellow]{run.draft}[/]: not a drop-in draft: {'; '.join(run.notes)}")


def print_tasks(console: Console, results: list) -> None:
    """Task retention: one row per group (operation and operand length), models side by side."""
    from ..evaluation.tasks import table_rows

    header, rows = table_rows(results)
    if not rows:
        return
    table = Table(*header, title=f"task: {results[0].task}")
    for row in rows:
        table.add_row(*row, end_section=row[0] == "all")
    console.print(table)


def print_audit(console: Console, report) -> None:
    """The audit (evaluation.audit.AuditReport): counts per reason, the warning a transplant would print, then
    the worst flagged rows."""
    console.print(f"audited {report.checked:,} computed rows ({', '.join(report.checks)}): "
                  f"{report.flagged:,} flagged", highlight=False)
    for warning in report.warnings():
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    counts = Table("reason", "rows", "flags beyond", title="Audit")
    for reason, count in report.counts.items():
        counts.add_row(reason, f"{count:,}", str(report.limits.get(reason, "")))
    console.print(counts)
    if report.tokens:
        worst = Table("id", "token", "reasons", "scores", title="Worst flagged rows")
        for token in report.tokens[:20]:
            worst.add_row(str(token.id), repr(token.token), ", ".join(token.reasons),
                          ", ".join(f"{name} {value:g}" for name, value in token.scores.items()))
        console.print(worst)
