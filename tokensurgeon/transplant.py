"""The main job: give a base checkpoint the donor's tokenizer and write a patched checkpoint.

Order of work: align the vocabularies; read only the embedding matrices; let the chosen
method compute rows for the donor's new tokens; assemble the new matrices (shared tokens keep
their base rows bit for bit); stream every other tensor through unchanged; copy the donor's
tokenizer; make config and generation config follow it; evaluate; write the report. All of it
goes into a staging directory that becomes OUT only at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from itertools import accumulate, chain
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__
from .alignment import COPIED
from .checkpoint import (Checkpoint, CheckpointError, gathered, nonfinite_summary, open_checkpoint,
                         read_embeddings, release_pages, tensor_sha256, write_weights)
from .devices import resolve_device
from .draft import check_draft_request, finish_draft
from .errors import MethodError
from .config import TransplantConfig
from .methods import InitContext, InitResult, Provenance, get_init_method
from .methods.base import mean_rows
from .methods.subword_mean import piece_means
from .outdir import atomic_directory, check_output_path
from .overlap import text_stats
from .pair import TokenizerPair, load_pair
from .report import TransplantReport, write_report
from .tokenizer_files import write_tokenizer

Progress = Callable[[str, int, int], None]
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
UNK_KEY = "unk_token_id"  # set only where the base config has one: generation configs never carry it


def open_donor_model(path: Path, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> Checkpoint | None:
    """The donor's checkpoint when it is a full model, None when it is a tokenizer only."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return None
    try:
        return open_checkpoint(path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    except CheckpointError as exc:
        if "no model.safetensors" in str(exc):
            return None
        raise


class AssembledMatrix:
    """The patched (n_rows, d) matrix, built a block of rows at a time on demand: copied rows bit-exact
    from the base, new rows from the method, padding rows the mean.

    Writing and hashing read it by row slices (``matrix[a:b]``), so the whole output never exists
    in memory: a transplant holds the base matrices and the new rows (in the base dtype), no more.
    tests/test_export.py checks the rows against a whole-matrix reference.
    """

    def __init__(self, base_matrix: torch.Tensor, pair: TokenizerPair, new_rows: torch.Tensor | None,
                 pad_row: torch.Tensor) -> None:
        alignment = pair.alignment
        self.base, self.dtype = base_matrix, base_matrix.dtype
        self.shape = torch.Size((alignment.n_rows, base_matrix.shape[1]))
        kinds = {kind: 0 for kind in COPIED} | {"padding": 2}
        self.kind = torch.tensor([kinds.get(kind, 1) for kind in alignment.match], dtype=torch.int8)
        self.source = torch.tensor(alignment.source, dtype=torch.long)
        self.new_position = torch.full((alignment.n_rows,), -1, dtype=torch.long)
        self.new_position[alignment.new_ids] = torch.arange(len(alignment.new_ids))
        self.new_rows = new_rows.to(device="cpu", dtype=self.dtype) if alignment.new_ids else None
        self.pad_row = pad_row.to(device="cpu", dtype=self.dtype)

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def element_size(self) -> int:
        return self.base.element_size()

    def contiguous(self) -> "AssembledMatrix":
        return self

    def __getitem__(self, rows: slice) -> torch.Tensor:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("AssembledMatrix takes contiguous row slices only")
        kind = self.kind[start:stop]
        out = torch.empty(max(stop - start, 0), self.shape[1], dtype=self.dtype)
        copied = (kind == 0).nonzero().flatten()
        for positions, rows in gathered(self.base, self.source[start:stop][copied]):
            out[copied[positions]] = rows
        new = (kind == 1).nonzero().flatten()
        if new.numel():
            out[new] = self.new_rows[self.new_position[start:stop][new]]
        out[(kind == 2).nonzero().flatten()] = self.pad_row
        return out

    def materialise(self) -> torch.Tensor:
        return self[:]


def donor_token_ids(pair: TokenizerPair, donor_model: Checkpoint | None) -> dict[str, Any]:
    """bos/eos/pad/unk ids the patched model should use: the donor model's own, else the donor tokenizer's roles."""
    roles = pair.donor_vocab.roles
    if donor_model is not None:
        source = dict(donor_model.config)
        generation = donor_model.path / "generation_config.json"
        if generation.is_file():
            source.update({k: v for k, v in json.loads(generation.read_text()).items() if k in TOKEN_ID_KEYS})
        return {key: source.get(key) for key in TOKEN_ID_KEYS} | {UNK_KEY: source.get(UNK_KEY, roles.get("unk"))}
    return {"bos_token_id": roles.get("bos"), "eos_token_id": roles.get("eos"), "pad_token_id": roles.get("pad"),
            UNK_KEY: roles.get("unk")}


def patch_config(config: dict, n_rows: int, token_ids: dict[str, Any]) -> dict:
    """config.json with vocab_size and special ids following the donor (text sub-config too)."""
    patched = json.loads(json.dumps(config))
    targets = [patched] + [patched[key] for key in ("text_config",) if isinstance(patched.get(key), dict)]
    for target in targets:
        if "vocab_size" in target or target is patched:
            target["vocab_size"] = n_rows
        for key, value in token_ids.items():
            if key in target or (target is patched and key != UNK_KEY):
                target[key] = value
    return patched


def check_finite(matrix: torch.Tensor | None, what: str, path: Path, *, allow: bool) -> list[str]:
    """Refuse NaN/inf in an embedding matrix (a warning instead with --allow-nonfinite)."""
    summary = nonfinite_summary(matrix) if matrix is not None else None
    if summary is None:
        return []
    values, rows, first = summary
    message = (f"{path}: {what} has {values} non-finite values (NaN/inf) in {rows} rows, "
               f"first bad row id {first}")
    if not allow:
        raise CheckpointError(f"{message}; pass --allow-nonfinite to go on anyway")
    return [f"{message}; kept as given (--allow-nonfinite)"]


def check_base_rows(pair: TokenizerPair, rows: int, path: Path) -> None:
    """Every base id the alignment copies or decomposes into must have an embedding row."""
    used = [i for i in pair.alignment.source if i >= rows]
    used += [i for pieces in pair.alignment.decompositions.values() for i in pieces if i >= rows]
    if used:
        token = pair.base_vocab.tokens[used[0]] if used[0] < pair.base_vocab.size else None
        raise CheckpointError(f"{path}: the base tokenizer uses id {used[0]} ({token!r}) but the base model has "
                              f"only {rows} embedding rows; tokenizer and weights do not belong together")


@dataclass
class Session:
    """A base checkpoint and a donor opened, aligned and read once; every method run (transplant runs one,
    compare several) reuses it, so no checkpoint is re-read per method."""

    config: TransplantConfig
    base: Checkpoint
    donor_model: Checkpoint | None
    pair: TokenizerPair
    base_embed: torch.Tensor
    base_head: torch.Tensor | None
    warnings: list[str]
    donor_matrices_read: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def donor_matrices(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The donor model's embeddings, read and checked on first use only."""
        if self.donor_matrices_read is None:
            matrices = read_embeddings(self.donor_model)
            for matrix, what in zip(matrices, ("donor input embedding", "donor output head")):
                self.warnings += check_finite(matrix, what, self.config.donor, allow=self.config.allow_nonfinite)
            self.donor_matrices_read = matrices
        return self.donor_matrices_read


def open_session(config: TransplantConfig, lap: Callable[[str], None] = lambda phase: None) -> Session:
    """Open both checkpoints, align the vocabularies and read the base embeddings (nothing else)."""
    trust, pickle = config.trust_remote_code, config.allow_pickle
    base = open_checkpoint(config.base, trust_remote_code=trust, allow_pickle=pickle)
    donor_model = open_donor_model(config.donor, trust_remote_code=trust, allow_pickle=pickle)
    rows = donor_model.vocab_rows if donor_model is not None else 0
    pair = load_pair(config.base, config.donor, n_rows=rows, pad_to_multiple=config.pad_to_multiple,
                     trust_remote_code=trust)
    check_base_rows(pair, base.vocab_rows, config.base)
    lap("align")
    base_embed, base_head = read_embeddings(base)
    warnings = check_finite(base_embed, "base input embedding", config.base, allow=config.allow_nonfinite)
    warnings += check_finite(base_head, "base output head", config.base, allow=config.allow_nonfinite)
    lap("read")
    return Session(config, base, donor_model, pair, base_embed, base_head, warnings)


def run_method(config: TransplantConfig, session: Session, progress: Progress | None) -> InitResult:
    """Run config's method on the session's matrices; MethodError when its inputs are missing."""
    method = get_init_method(config.method, **config.method_options)
    device = resolve_device(config.device)
    pair, donor_model = session.pair, session.donor_model
    donor_embed = donor_head = None
    if method.needs_donor_embeddings and donor_model is None:
        raise MethodError(f"method {config.method!r} needs the donor model's embeddings, but {config.donor} "
                          "is a tokenizer only; pass a full model directory or pick a tokenizer-only method")
    # a method that can work without them (focus, tokenadapt) still gets them when the donor is a model
    reads_donor = donor_model is not None and (method.needs_donor_embeddings
                                               or getattr(method, "uses_donor_embeddings", False))
    if reads_donor:
        if donor_model.vocab_rows < pair.donor_vocab.size:
            raise MethodError(f"{config.donor}: donor tokenizer defines {pair.donor_vocab.size} ids but the donor "
                              f"model has only {donor_model.vocab_rows} embedding rows; tokenizer and weights do not "
                              "belong together")
    # float32 working copies, unless the method upcasts the rows it reads (then bf16 stays bf16: half the memory)
    working = (lambda m: m.to(device)) if getattr(method, "upcasts_rows", False) else (lambda m: m.float().to(device))
    if reads_donor:
        donor_embed, donor_head = (working(m) if m is not None else None for m in session.donor_matrices())
    base_embed, base_head = session.base_embed, session.base_head
    ctx = InitContext(pair.alignment, pair.base_vocab, pair.donor_vocab, working(base_embed),
                      working(base_head) if base_head is not None else None, donor_embed, donor_head,
                      device, config.seed, (lambda done, total: progress("method", done, total)) if progress else None,
                      tokenizers=pair, base_path=Path(config.base), corpus=tuple(Path(p) for p in config.corpus))
    # peak memory should follow the embeddings: a method that needs a tokenizer reloads it, but a corpus is
    # only ever read through the donor tokenizer (auxiliary spaces), so that one stays when a corpus is given
    pair.release_tokenizers(keep=("donor",) if config.corpus and not reads_donor else ())
    result = method.initialise(ctx)
    for matrix in (base_embed, base_head) + (session.donor_matrices_read or ()):
        release_pages(matrix)
    return result


def rounded_weights(provenance: list[Provenance]) -> list[list[float]]:
    """Each row's weights rounded to 6 decimals (readable JSON), in one numpy call: ~10^6 weights."""
    flat = np.round(np.fromiter(chain.from_iterable(p.weights for p in provenance), dtype=np.float64), 6).tolist()
    ends = list(accumulate(len(p.weights) for p in provenance))
    return [flat[end - len(p.weights):end] for p, end in zip(provenance, ends)]


def provenance_rows(pair: TokenizerPair, result: InitResult) -> list[dict[str, Any]]:
    """One JSON-able row per donor row: how it got its values."""
    alignment, vocab = pair.alignment, pair.donor_vocab
    computed = dict(zip(alignment.new_ids, zip(result.provenance, rounded_weights(result.provenance))))
    rows = []
    for donor_id, kind in enumerate(alignment.match):
        row: dict[str, Any] = {"id": donor_id, "token": vocab.tokens[donor_id] if donor_id < vocab.size else None,
                               "match": kind}
        if kind in COPIED:
            row |= {"path": "copy", "sources": [alignment.source[donor_id]], "weights": [1.0]}
        elif kind == "padding":
            row |= {"path": "padding-mean", "sources": [], "weights": []}
        else:
            prov, weights = computed[donor_id]
            row |= {"path": prov.path, "sources": prov.sources, "weights": weights}
            if prov.residual is not None:
                row["residual"] = round(prov.residual, 6)
        rows.append(row)
    return rows


def write_patched(session: Session, config: TransplantConfig, result: InitResult, staging: Path,
                  progress: Progress | None) -> tuple[TransplantReport, list[dict[str, Any]]]:
    """Write the patched checkpoint (weights, config, tokenizer) into staging; return its report (no
    evaluation yet, empty timings) and provenance rows. Shared by transplant and compare."""
    base, pair = session.base, session.pair
    base_embed, base_head = session.base_embed, session.base_head
    n_rows = pair.alignment.n_rows
    residuals = new_row_departures(session, result)
    defined = [i for i in pair.base_vocab.defined_ids() if i < base.vocab_rows]
    new_embed = AssembledMatrix(base_embed, pair, result.embed, mean_rows(base_embed, defined))
    result.embed = None  # now held in the base dtype by the assembled matrix: free a float32 copy at once
    replacements = {base.input_name: new_embed}
    if base.tied and base.output_name:
        replacements[base.output_name] = new_embed
    new_head = None
    if not base.tied:
        new_head = AssembledMatrix(base_head, pair, result.head, mean_rows(base_head, defined))
        replacements[base.output_name] = new_head
        result.head = None
    if base.format == "pickle":  # the pickle writer takes whole tensors
        replacements = {name: matrix.materialise() for name, matrix in replacements.items()}
    warnings = session.warnings + build_warnings(pair, result)

    write_weights(base, staging, replacements,
                  progress=(lambda done, total: progress("write", done, total)) if progress else None)
    token_ids = donor_token_ids(pair, session.donor_model)
    config_out = patch_config(base.config, n_rows, token_ids)
    (staging / "config.json").write_text(json.dumps(config_out, indent=2, sort_keys=True) + "\n")
    write_generation_config(base.path, staging, token_ids)
    if base.config.get("auto_map"):  # the config names code shipped beside it: keep it with the config
        for code in sorted(Path(config.base).glob("*.py")):
            shutil.copyfile(code, staging / code.name)
    warnings += write_tokenizer(config.donor, pair.base_traits, pair.donor_traits,
                                set(pair.base_vocab.specials.values()), set(pair.donor_vocab.specials.values()),
                                staging, chat_template=config.chat_template)
    report = TransplantReport(
        version=__version__,
        base={"path": str(config.base), "kind": pair.base_vocab.kind, "vocab_size": pair.base_vocab.size,
              "rows": base.vocab_rows, "hidden_size": base.hidden_size, "tied": base.tied,
              "embed_sha256": tensor_sha256(base_embed),
              "head_sha256": tensor_sha256(base_head) if base_head is not None else None},
        donor={"path": str(config.donor), "kind": pair.donor_vocab.kind, "vocab_size": pair.donor_vocab.size,
               "is_model": session.donor_model is not None},
        output={"path": str(config.out), "rows": n_rows, "embed_sha256": tensor_sha256(new_embed),
                "head_sha256": tensor_sha256(new_head) if new_head is not None else None},
        method={"name": config.method, "options": config.method_options, "seed": config.seed,
                "device": str(resolve_device(config.device)), "chat_template": config.chat_template}
               | ({"info": result.info} if result.info else {}),
        counts=pair.alignment.counts() | {"shared_tokens": pair.alignment.shared_tokens,
                                          "computed": len(pair.alignment.new_ids)},
        timings={},
        warnings=warnings,
        norms=row_norm_histograms(new_embed),
        residuals=residuals,
    )
    return report, provenance_rows(pair, result)


def row_norm_histograms(matrix: AssembledMatrix, bins: int = 40) -> dict[str, Any]:
    """Histogram counts of the L2 norms of copied (shared) and new input-embedding rows, on common bins:
    new rows far outside the shared rows' range are the first sign of a bad initialisation."""
    shared = row_norms(matrix.base, matrix.source[matrix.kind == 0])
    new = (torch.linalg.vector_norm(matrix.new_rows.float(), dim=1) if matrix.new_rows is not None
           else torch.zeros(0))
    shared, new = shared[shared.isfinite()], new[new.isfinite()]  # --allow-nonfinite rows stay out of the picture
    both = torch.cat([shared, new])
    if not both.numel():
        return {}
    low, high = both.min().item(), both.max().item()
    high = high if high > low else low + 1.0
    count = lambda values: torch.histc(values, bins=bins, min=low, max=high).long().tolist()  # noqa: E731
    return {"edges": torch.linspace(low, high, bins + 1).tolist(), "shared": count(shared), "new": count(new),
            "shared_median": shared.median().item() if shared.numel() else None,
            "new_median": new.median().item() if new.numel() else None}


def row_norms(matrix: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """L2 norms of the given rows, read in row order (``checkpoint.gathered``)."""
    norms = torch.zeros(len(ids))
    for positions, rows in gathered(matrix, ids):
        norms[positions.cpu()] = torch.linalg.vector_norm(rows.float(), dim=1).cpu()
    return norms


def new_row_departures(session: Session, result: InitResult, top: int = 20) -> dict[str, Any]:
    """The new tokens a method approximated worst, for the report.

    Methods that approximate a target (omp: the donor row) put a relative residual in their provenance;
    those are reported. Otherwise the measure is how far each new row lies from its pieces' mean
    (the subword-mean row), relative to that row's norm: where the method departs most from the
    tokenizer-only baseline. Computed before the rows are handed to the writer.
    """
    pair, new_ids = session.pair, session.pair.alignment.new_ids
    tokens = pair.donor_vocab.tokens
    residual = [p.residual for p in result.provenance]
    if new_ids and all(r is not None for r in residual):
        values = torch.tensor(residual, dtype=torch.float32)
        measure = f"relative residual of the {result.provenance[0].path} approximation in the donor space"
    else:
        with_pieces = [row for row, i in enumerate(new_ids) if pair.alignment.decompositions.get(i)]
        if not with_pieces:
            return {}
        pieces = [pair.alignment.decompositions[new_ids[row]] for row in with_pieces]
        reference = piece_means(session.base_embed, pieces, session.base_embed[0]).float()
        rows = result.embed[with_pieces].float().to(reference.device)
        distance = torch.linalg.vector_norm(rows - reference, dim=1) / torch.linalg.vector_norm(reference, dim=1
                                                                                               ).clamp(min=1e-12)
        values = torch.full((len(new_ids),), float("nan"))
        values[with_pieces] = distance.cpu()
        measure = "distance of the new row from its pieces' mean (subword-mean row), relative to that row's norm"
    order = torch.nan_to_num(values, nan=-1.0).argsort(descending=True)[:top].tolist()
    return {"measure": measure, "max": float(torch.nan_to_num(values, nan=0.0).max()),
            "tokens": [{"id": new_ids[row], "token": tokens[new_ids[row]] if new_ids[row] < len(tokens) else None,
                        "value": round(float(values[row]), 6)} for row in order if values[row] == values[row]]}


def transplant(config: TransplantConfig, progress: Progress | None = None) -> TransplantReport:
    """Run a transplant end to end and return its report (also written to OUT)."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        timings[phase] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    resolve_device(config.device)  # a wrong --device fails now, not after the slow steps
    check_output_path(config.out, config.input_paths(), force=config.force)
    session = open_session(config, lap)
    if config.draft_for is not None:  # refuse a row count that cannot match before the slow method runs
        check_draft_request(config.draft_for, session.donor_model and session.donor_model.vocab_rows,
                            session.pair.alignment.n_rows, config.pad_to_multiple)
    result = run_method(config, session, progress)
    lap("method")

    with atomic_directory(config.out) as staging:
        report, provenance = write_patched(session, config, result, staging, progress)
        if config.draft_for is not None:
            report.warnings += finish_draft(config.draft_for, staging)
        lap("write")
        report.evaluation = evaluate_pair(config, session.pair, staging, progress)
        lap("evaluate")
        report.timings = timings
        write_report(report, staging, provenance)
    return report


def write_generation_config(base_dir: Path, staging: Path, token_ids: dict[str, Any]) -> None:
    """The base's generation settings with the donor's special token ids."""
    source = base_dir / "generation_config.json"
    generation = json.loads(source.read_text()) if source.is_file() else {}
    generation.update({key: value for key, value in token_ids.items() if value is not None and key != UNK_KEY})
    (staging / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")


def build_warnings(pair: TokenizerPair, result: InitResult) -> list[str]:
    warnings = [pair.number_warning] if pair.number_warning else []
    fallbacks = [pair.donor_vocab.tokens[i] for i, prov in zip(pair.alignment.new_ids, result.provenance)
                 if prov.path.startswith("fallback")]
    if fallbacks:
        warnings.append(f"{len(fallbacks)} new tokens could not be decomposed into base tokens and got the mean "
                        f"row (e.g. {', '.join(repr(t) for t in fallbacks[:5])})")
    return warnings


def evaluate_pair(config: TransplantConfig, pair: TokenizerPair, patched: Path,
                  progress: Progress | None) -> list[dict[str, Any]]:
    """Bits per byte of base (base tokenizer) and patched (donor tokenizer) on each --eval-text."""
    if not config.eval_texts:
        return []
    from .evaluate import evaluate_models

    texts = read_eval_texts(config.eval_texts, config.eval_max_bytes)
    before, after = evaluate_models([config.base, patched], texts, device=config.device, progress=progress,
                                    trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle)
    return evaluation_rows(pair, texts, before, after)


def read_eval_texts(paths: tuple[Path, ...], max_bytes: int | None) -> dict[str, str]:
    """label (file name) -> text, cut to max_bytes UTF-8 bytes when given."""
    from .evaluate import truncate_utf8

    texts = {Path(p).name: Path(p).read_text(encoding="utf-8") for p in paths}
    return {label: truncate_utf8(text, max_bytes) for label, text in texts.items()} if max_bytes else texts


def evaluation_rows(pair: TokenizerPair, texts: dict[str, str], before, after) -> list[dict[str, Any]]:
    """One row per text: base and patched bits per byte (evaluate.ModelScores), their ratio, and the
    pair's split statistics on it (the floor a method cannot beat)."""
    rows = []
    for label, base_score, patched_score in zip(texts, before.scores, after.scores):
        stats = text_stats(label, texts[label], pair.alignment, pair.base_tokenizer, pair.donor_tokenizer)
        rows.append({"text": label, "bytes": base_score.n_bytes, "base_bpb": base_score.bits_per_byte,
                     "patched_bpb": patched_score.bits_per_byte,
                     "ratio": patched_score.bits_per_byte / base_score.bits_per_byte,
                     "base_bytes_per_token": base_score.bytes_per_token,
                     "donor_bytes_per_token": patched_score.bytes_per_token,
                     "new_token_share": stats.new_token_share, "boundary_agreement": stats.boundary_agreement})
    return rows
