"""The method bake-off: every applicable method on one base/donor pair, ranked by bits per byte.

One session (checkpoints opened, vocabularies aligned, embeddings read once), one evaluation of
the base per text, then per method: compute rows, write a patched checkpoint into a staging
directory, score it. A method whose inputs are missing (MethodError: omp with a tokenizer-only
donor, a corpus method without --corpus) is listed as skipped with its reason. Only the best
checkpoint so far is kept on disk; with -o it becomes OUT, with its report, atomically.

Ranking: the geometric mean over texts of the bits-per-byte ratio (patched / base), lower is better;
a geometric mean weighs a 10% loss on one text the same whatever that text's bpb.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import CompareConfig
from ..errors import MethodError, TokenSurgeonError
from ..evaluation import evaluate_models
from ..evaluation.resources import measure_step
from ..evaluation.rows import BaseRow, EvalRow, evaluation_rows, geometric_mean, read_eval_texts
from ..methods import INIT_METHODS
from ..pipeline.run_method import run_method
from ..pipeline.session import open_session
from ..pipeline.transplant import write_patched
from ..report.markdown import write_report
from ..runtime.devices import resolve_device
from ..runtime.outdir import atomic_directory, check_output_path
from ..runtime.progress import Progress

RANKING = "geometric mean over texts of patched/base bits per byte (lower is better)"


@dataclass
class MethodEntry:
    """One method's result: scores per text, or why it was skipped."""

    method: str
    status: str  # "ok" or "skipped"
    reason: str | None = None
    score: float | None = None  # geometric mean of the bpb ratios
    seconds: float | None = None  # method + writing the checkpoint
    eval_seconds: float | None = None
    peak_rss: int | None = None
    peak_rss_increase: int | None = None
    peak_cuda: int | None = None
    evaluation: list[EvalRow] = field(default_factory=list)


@dataclass
class CompareReport:
    version: str
    base: str
    donor: str
    texts: list[BaseRow]
    entries: list[MethodEntry]  # ranked: best first, skipped last
    ranking: str = RANKING
    best: str | None = None
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Registered methods left out of the default bake-off, with the reason shown; naming one in --methods runs it.
NOT_BY_DEFAULT = {"hypernet": "not run by default: it trains a network on the spot (slow on CPU); "
                              "name it in --methods to include it"}


def default_methods() -> tuple[str, ...]:
    """Every registered method but NOT_BY_DEFAULT, zero included as the floor a real method must clear."""
    return tuple(sorted(set(INIT_METHODS) - set(NOT_BY_DEFAULT)))


def compare(config: CompareConfig, progress: Progress | None = None) -> CompareReport:
    """Run the bake-off; returns the ranked report (also written to OUT with the best model)."""
    methods = config.methods or default_methods()
    unknown = [name for name in methods if name not in INIT_METHODS]
    if unknown:
        raise TokenSurgeonError(f"unknown method {unknown[0]!r} in --methods; choose from: "
                                f"{', '.join(sorted(INIT_METHODS))}")
    device = resolve_device(config.device)
    if config.out is not None:
        check_output_path(config.out, [config.base, config.donor, *config.texts, *config.corpus], force=config.force)
    for path in config.texts:
        if not Path(path).is_file():
            raise TokenSurgeonError(f"text file {path} does not exist")
    texts = read_eval_texts(config.texts, config.max_bytes)
    session = open_session(config.for_method(methods[0], Path(config.out or ".")), methods=list(methods))
    load = {"device": config.device, "trust_remote_code": config.trust_remote_code,
            "allow_pickle": config.allow_pickle, "progress": progress}
    (base_scores,) = evaluate_models([Path(config.base)], texts, **load)

    entries = [MethodEntry(name, "skipped", reason=reason) for name, reason in NOT_BY_DEFAULT.items()
               if not config.methods and name in INIT_METHODS]
    best: tuple[MethodEntry, Path, Any] | None = None
    with contextlib.ExitStack() as stack:
        if config.out is not None:
            root = stack.enter_context(atomic_directory(config.out))
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tokensurgeon-compare-")))
        work = root / ".methods"
        for name in methods:
            staging = work / name
            method_config = config.for_method(name, Path(config.out) if config.out else staging)
            step = (lambda phase, done, total, name=name: progress(f"{name} {phase}", done, total)) if progress else None
            try:
                with measure_step(device) as usage:
                    result = run_method(method_config, session, step)
                    staging.mkdir(parents=True)
                    report, provenance = write_patched(session, method_config, result, staging, step)
                    del result
            except MethodError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                entries.append(MethodEntry(name, "skipped", reason=str(exc)))
                continue
            with measure_step() as evaluation:
                (scores,) = evaluate_models([staging], texts, **load)
            report.evaluation = evaluation_rows(session.pair, texts, base_scores, scores)
            report.timings = {"method+write": round(usage.seconds, 3), "evaluate": round(evaluation.seconds, 3)}
            write_report(report, staging, provenance)
            del provenance
            entry = MethodEntry(name, "ok", score=geometric_mean([row.ratio for row in report.evaluation]),
                                seconds=round(usage.seconds, 3), eval_seconds=round(evaluation.seconds, 3),
                                peak_rss=usage.peak_rss, peak_rss_increase=usage.peak_rss_increase,
                                peak_cuda=usage.peak_cuda, evaluation=report.evaluation)
            entries.append(entry)
            if best is None or entry.score < best[0].score:
                if best is not None:
                    shutil.rmtree(best[1])
                best = (entry, staging, report)
            else:
                shutil.rmtree(staging)
        ranked = sorted((e for e in entries if e.status == "ok"), key=lambda e: e.score)
        result = CompareReport(
            version=__version__, base=str(config.base), donor=str(config.donor),
            texts=[BaseRow(s.label, s.n_bytes, s.bits_per_byte) for s in base_scores.scores],
            entries=ranked + [e for e in entries if e.status != "ok"],
            best=best[0].method if best else None, out=str(config.out) if config.out and best else None)
        if config.out is not None:
            if best is None:
                raise TokenSurgeonError("no method could run on these inputs, so there is no model to keep: "
                                        + "; ".join(f"{e.method}: {e.reason}" for e in entries))
            _, staging, report = best
            for entry in staging.iterdir():
                os.replace(entry, root / entry.name)
            shutil.rmtree(work)
            write_report(report, root, None, comparison=result)
    return result
