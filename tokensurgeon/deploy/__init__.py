"""Deployment check: will engines load this checkpoint? (``export --check-deploy`` / a ``check`` command.)

``check_deploy`` runs the static checks every engine needs (static.py) and, when given a llama.cpp
converter, converts to GGUF with it (gguf.py) and reports success or the converter's own reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .gguf import Conversion, convert, find_converter
from .static import Finding, check_draft, check_model

__all__ = ["DeployReport", "Finding", "Conversion", "check_deploy", "check_model", "check_draft", "convert",
           "find_converter", "render_text"]


@dataclass
class DeployReport:
    model: str
    findings: list[Finding]
    conversion: Conversion | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings) and (self.conversion is None or self.conversion.ok)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "ok": self.ok, "findings": [f.to_dict() for f in self.findings],
                "conversion": self.conversion.to_dict() if self.conversion else None, "notes": self.notes}


def check_deploy(model: Path, *, llama_cpp: Path | None = None, draft_for: Path | None = None,
                 outfile: Path | None = None, outtype: str = "f16", vocab_only: bool = False,
                 timeout: float = 1800) -> DeployReport:
    """Static checks, the draft check when draft_for (the target) is given, and a GGUF conversion when llama_cpp is."""
    findings = check_model(model)
    if draft_for is not None:
        findings += check_draft(model, draft_for)
    conversion = None
    if llama_cpp is not None:
        conversion = convert(model, llama_cpp, outfile=outfile, outtype=outtype, vocab_only=vocab_only,
                             timeout=timeout)
    notes = [] if llama_cpp is not None else ["GGUF conversion not run: pass a llama.cpp checkout or its converter"]
    return DeployReport(str(model), findings, conversion, notes)


def render_text(report: DeployReport) -> str:
    """Plain lines for a terminal or a log: one per check, then the conversion."""
    lines = [f"deploy check of {report.model}: {'ok' if report.ok else 'FAILED'}"]
    lines += [f"  [{'ok' if f.ok else 'FAIL'}] {f.check}: {f.message}"
              + (f" ({f.engines})" if f.engines and not f.ok else "") for f in report.findings]
    conversion = report.conversion
    if conversion is not None:
        if conversion.ok:
            size = f", {conversion.gguf_bytes / 1e6:,.0f} MB" if conversion.gguf_bytes else ""
            lines.append(f"  [ok] llama.cpp convert_hf_to_gguf.py: converted in {conversion.seconds:.0f} s{size}")
            lines += [f"         {note}" for note in conversion.adapted]
        else:
            lines.append(f"  [FAIL] llama.cpp convert_hf_to_gguf.py: {conversion.reason}")
            if conversion.hint:
                lines.append(f"         {conversion.hint}")
    lines += [f"  note: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"
