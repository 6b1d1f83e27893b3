"""The main job: give a base checkpoint the donor's tokenizer and write a patched checkpoint.

Order of work: align the vocabularies and read only the embedding matrices (session.py); let the
chosen method compute rows for the donor's new tokens (run_method.py); assemble the new matrices,
shared tokens keeping their base rows bit for bit (assemble.py); stream every other tensor through
unchanged; copy the donor's tokenizer; make config and generation config follow it; evaluate; write
the report. All of it goes into a staging directory that becomes OUT only at the end.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any, Iterator

from .. import __version__
from ..checkpoint import Checkpoint
from ..checkpoint.model_config import patch_config, patch_generation_config, read_json, write_json
from ..checkpoint.tokenizer_files import write_tokenizer
from ..checkpoint.writer import check_vocab_dims, write_weights
from ..config import TransplantConfig
from ..evaluation.rows import evaluate_pair, read_eval_texts
from ..methods import InitResult
from ..methods.base import FALLBACK_PATH
from ..report.markdown import write_report
from ..report.models import ReportWarning, TransplantReport
from ..runtime.devices import resolve_device
from ..runtime.outdir import atomic_directory, check_free_space, check_output_path
from ..runtime.progress import Progress, Stopwatch, phase
from ..vocab.bytes import spell_bytes
from ..vocab.pair import TokenizerPair
from .audit import audit_transplant
from .assemble import AssembledMatrix, extra_vocab_tensors, new_row_departures, provenance_rows, row_norm_histograms
from .draft import check_draft_request, finish_draft
from .run_method import run_method
from .session import Session, donor_config_rows, open_session
from .chat import chat_turn, check_template_tokens, with_end_of_turn
from .special_ids import donor_token_ids, remapped_other_ids


def write_patched(session: Session, config: TransplantConfig, result: InitResult, staging: Path,
                  progress: Progress | None) -> tuple[TransplantReport, Iterator[dict[str, Any]]]:
    """Write the patched checkpoint (weights, config, tokenizer) into staging; return its report (no
    evaluation yet, empty timings) and its provenance rows, made as they are written. Shared by transplant and
    compare."""
    base, pair = session.base, session.pair
    base_embed, base_head = session.base_embed, session.base_head
    n_rows = pair.alignment.n_rows
    residuals = new_row_departures(session, result)
    audit = audit_transplant(session, result)  # before the float32 rows are handed over below
    padded = "padding" in pair.alignment.match  # padding rows take the mean row
    new_embed = AssembledMatrix(base_embed, pair, result.embed, session.embed_stats.mean if padded else None)
    result.embed = None  # now held in the base dtype by the assembled matrix: free a float32 copy at once
    replacements = {base.input_name: new_embed}
    if base.tied and base.output_name:
        replacements[base.output_name] = new_embed
    new_head = None
    if not base.tied:
        new_head = AssembledMatrix(base_head, pair, result.head, session.head_stats.mean if padded else None)
        replacements[base.output_name] = new_head
        result.head = None
    replacements |= extra_vocab_tensors(session)
    token_ids = donor_token_ids(pair, session.donor_model, n_rows)
    other_ids = remapped_other_ids(pair, base.config, base.path)
    if base.format == "pickle":  # the pickle writer takes whole tensors
        replacements = {name: matrix.materialise() for name, matrix in replacements.items()}
    warnings = (ReportWarning.all("nonfinite", session.warnings) + build_warnings(pair, result)
                + ReportWarning.all("audit", audit.warnings()))

    write_weights(base, staging, replacements, progress=phase(progress, "write"))
    check_vocab_dims(base, staging, n_rows)
    warnings += ReportWarning.all("tokenizer", write_tokenizer(config.donor, pair.base_traits, pair.donor_traits,
                                                               staging, chat_template=config.chat_template))
    chat = chat_turn(staging, config.chat_template, trust_remote_code=config.trust_remote_code)
    token_ids = with_end_of_turn(token_ids, chat.end_of_turn_id)  # generate() stops at the turn's end
    write_json(staging / "config.json", patch_config(base.config, n_rows, token_ids, other_ids))
    write_json(staging / "generation_config.json",
               patch_generation_config(read_json(base.path / "generation_config.json"), token_ids))
    if base.config.get("auto_map"):  # the config names code shipped beside it: keep it with the config
        for code in sorted(Path(config.base).glob("*.py")):
            shutil.copyfile(code, staging / code.name)
    report = TransplantReport(
        version=__version__,
        base={"path": str(config.base), "kind": pair.base_vocab.kind, "vocab_size": pair.base_vocab.size,
              "rows": base.vocab_rows, "hidden_size": base.hidden_size, "tied": base.tied,
              "embed_sha256": session.embed_stats.sha256,
              "head_sha256": session.head_stats.sha256 if session.head_stats is not None else None},
        donor={"path": str(config.donor), "kind": pair.donor_vocab.kind, "vocab_size": pair.donor_vocab.size,
               "is_model": session.donor_model is not None or donor_config_rows(config.donor) > 0},
        output={"path": str(config.out), "rows": n_rows, "embed_sha256": new_embed.sha256(),
                "head_sha256": new_head.sha256() if new_head is not None else None},
        method={"name": config.method, "options": config.method_options, "seed": config.seed,
                "device": str(resolve_device(config.device)), "chat_template": config.chat_template}
               | ({"info": result.info} if result.info else {}),
        counts=pair.alignment.counts() | {"shared_tokens": pair.alignment.shared_tokens,
                                          "computed": len(pair.alignment.new_ids)},
        timings={},
        warnings=warnings,
        norms=row_norm_histograms(new_embed, session.embed_stats.norms),
        residuals=residuals,
        chat=chat.to_dict(),
        audit=audit.to_dict(),
    )
    return report, provenance_rows(pair, result)


def transplant(config: TransplantConfig, progress: Progress | None = None) -> TransplantReport:
    """Run a transplant end to end and return its report (also written to OUT)."""
    clock = Stopwatch()
    resolve_device(config.device)  # a wrong --device fails now, not after the slow steps
    check_output_path(config.out, config.input_paths(), force=config.force)
    read_eval_texts(config.eval_texts, config.eval_max_bytes)  # a bad --eval-text fails now, not after the work
    session = open_session(config, clock.lap)
    if config.chat_template == "base":  # a template the donor cannot spell fails before the slow method
        check_template_tokens(session.pair.base_traits.chat_template, set(session.pair.base_vocab.specials.values()),
                              set(session.pair.donor_vocab.specials.values()))
    if config.draft_for is not None:  # refuse a row count that cannot match before the slow method runs
        check_draft_request(config.draft_for, (session.donor_model.vocab_rows if session.donor_model
                                               else donor_config_rows(config.donor) or None),
                            session.pair.alignment.n_rows, config.pad_to_multiple)
    check_free_space(config.out, output_bytes(session))  # before the method: a full disk fails now
    result = run_method(config, session, progress)
    clock.lap("method")

    with atomic_directory(config.out) as staging:
        report, provenance = write_patched(session, config, result, staging, progress)
        if config.draft_for is not None:
            report.warnings += ReportWarning.all("draft", finish_draft(config.draft_for, staging))
        clock.lap("write")
        report.evaluation = evaluate_pair(config, session.pair, staging, progress)
        clock.lap("evaluate")
        report.timings = clock.timings
        write_report(report, staging, provenance)
        write_card(config, report, staging)
    return report


def write_card(config: TransplantConfig, report: TransplantReport, staging: Path) -> None:
    """README.md: the model card (report/card.py); the base's own card is kept beside it."""
    from ..report.card import invoked_command, write_transplant_card

    fallback = shlex.join(["tokensurgeon", "transplant", str(config.base), str(config.donor), "-o", str(config.out),
                           "--method", config.method] + [f"--option={k}={v}" for k, v in config.method_options.items()])
    write_transplant_card(report, staging, base_dir=Path(config.base), command=invoked_command(fallback))


def output_bytes(session: Session) -> int:
    """About how many bytes the patched checkpoint takes: the base's weights with every vocabulary-sized
    tensor resized to the new row count (tokenizer files and reports are small beside them)."""
    base, rows = session.base, session.pair.alignment.n_rows
    total = sum(file.stat().st_size for file in base.files)
    names = [base.input_name, base.output_name] + [key for key, _ in base.vocab_extras]
    for info in (base.tensors[name] for name in dict.fromkeys(names) if name):
        total += (info.end - info.start) * (rows - base.vocab_rows) // max(base.vocab_rows, 1)
    return max(total, 0)


def build_warnings(pair: TokenizerPair, result: InitResult) -> list[ReportWarning]:
    warnings = [ReportWarning(pair.number_warning, "number-scheme")] if pair.number_warning else []
    donor = pair.donor_vocab
    fallbacks = [donor.tokens[i] if donor.canonical[i] is None else spell_bytes(donor.canonical[i])
                 for i, prov in zip(pair.alignment.new_ids, result.provenance) if prov.path == FALLBACK_PATH]
    if fallbacks:
        warnings.append(ReportWarning(f"{len(fallbacks)} new tokens could not be decomposed into base tokens and got the mean "
                        f"row (e.g. {', '.join(repr(t) for t in fallbacks[:5])})", "fallback"))
    return warnings
