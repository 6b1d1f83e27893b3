"""The audit (evaluation/audit.py) fed from a transplant in progress, or from an output directory after
the fact: report.json names base and donor, provenance.jsonl holds each row's sources and weights, and
the output's own embedding holds the computed rows, so nothing is recomputed."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import open_checkpoint, read_embeddings
from ..config import AuditConfig
from ..errors import TokenSurgeonError
from ..evaluation.audit import AuditInputs, AuditReport, audit_rows
from ..methods import InitResult, Provenance
from ..methods.base import gather_rows
from ..vocab.bytes import spell_bytes
from ..vocab.tokenizer import Vocabulary, build_vocabulary, load_tokenizer
from .session import Session, open_donor_model

ANCHOR_KINDS = ("exact", "bytes")  # ordinary shared tokens: the anchors methods mix


def spelled(vocab: Vocabulary, ids: list[int]) -> list[str]:
    """Tokens as people read them: text, raw bytes as <0xNN> (vocab.bytes.spell_bytes)."""
    return [str(vocab.tokens[i]) if i >= vocab.size or vocab.canonical[i] is None else spell_bytes(vocab.canonical[i])
            for i in ids]


def audit_transplant(session: Session, result: InitResult, options: AuditConfig = AuditConfig()) -> AuditReport:
    """Audit a transplant's computed rows before they are written (the donor's embedding only when the
    method read it: a tokenizer-only run never opens the donor as a model)."""
    pair = session.pair
    alignment = pair.alignment
    anchors = [i for i, kind in enumerate(alignment.match) if kind in ANCHOR_KINDS]
    donor = session.donor_matrices_read[0] if session.donor_matrices_read is not None else None
    base_ids = session.defined_base_ids
    return audit_rows(AuditInputs(
        new_ids=alignment.new_ids, rows=result.embed, provenance=result.provenance,
        spellings=spelled(pair.donor_vocab, alignment.new_ids), base_embed=session.base_embed,
        base_ids=base_ids, anchor_donor=anchors,
        anchor_base=[alignment.source[i] for i in anchors], donor_embed=donor,
        donor_byte_fallback=tuple(pair.donor_vocab.byte_fallback), base_norms=session.embed_stats.norms[base_ids]),
        options)


def read_output_record(out: Path) -> tuple[dict, list[dict]]:
    """report.json and provenance.jsonl of a transplant output, or one clear error."""
    try:
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        with open(out / "provenance.jsonl", encoding="utf-8") as handle:
            provenance = [json.loads(line) for line in handle]
        report["base"]["path"], report["donor"]["path"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TokenSurgeonError(f"{out}: not a transplant output (report.json and provenance.jsonl are read): "
                                f"{error}") from None
    return report, provenance


def audit_output(out: Path, *, options: AuditConfig = AuditConfig(), trust_remote_code: bool = False) -> AuditReport:
    """Audit an existing transplant output against the base and donor its report.json names.

    Raises:
        TokenSurgeonError: OUT is not a transplant output, or its base (or donor model) has moved.
    """
    out = Path(out)
    report, records = read_output_record(out)
    base_path, donor_path = Path(report["base"]["path"]), Path(report["donor"]["path"])
    for side, path in (("base", base_path), ("donor", donor_path)):
        if not path.is_dir():
            raise TokenSurgeonError(f"{out}: report.json names the {side} {path}, which is not a directory any more")
    base, output = open_checkpoint(base_path), open_checkpoint(out)
    new = [row for row in records if row["match"] not in (*ANCHOR_KINDS, "special-role", "special-content", "padding")]
    anchors = [row for row in records if row["match"] in ANCHOR_KINDS]
    new_ids = [row["id"] for row in new]
    donor_model = open_donor_model(donor_path) if report["donor"].get("is_model") else None
    vocab, base_vocab = (build_vocabulary(load_tokenizer(path, trust_remote_code=trust_remote_code))
                         for path in (out, base_path))  # the output carries the donor's tokenizer
    return audit_rows(AuditInputs(
        new_ids=new_ids, rows=gather_rows(read_embeddings(output)[0], new_ids),
        provenance=[Provenance(row["path"], row["sources"], row["weights"], row.get("residual")) for row in new],
        spellings=spelled(vocab, new_ids), base_embed=read_embeddings(base)[0],
        base_ids=[i for i in base_vocab.defined_ids() if i < base.vocab_rows],
        anchor_donor=[row["id"] for row in anchors], anchor_base=[row["sources"][0] for row in anchors],
        donor_embed=read_embeddings(donor_model)[0] if donor_model is not None else None,
        donor_byte_fallback=tuple(vocab.byte_fallback)), options)
