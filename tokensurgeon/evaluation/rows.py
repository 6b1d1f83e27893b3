"""Per-text rows of every evaluation a job reports (transplant, compare, heal): one typed row per text, field
names as the job's JSON lists them, so a new metric is one field here and its renderers."""

from __future__ import annotations

import glob
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import TransplantConfig
from ..errors import TokenSurgeonError
from ..runtime.progress import Progress
from ..vocab.overlap import text_stats
from ..vocab.pair import TokenizerPair
from .bpb import ModelScores, evaluate_models, truncate_utf8

TEXT_SUFFIXES = (".txt", ".md")  # the files a folder given as text stands for


@dataclass(frozen=True)
class EvalRow:
    """One text: base and patched bits per byte, their ratio, and the pair's split statistics on it
    (the floor a method cannot beat). Field names are report.json's keys."""

    text: str
    bytes: int
    base_bpb: float
    patched_bpb: float
    ratio: float
    base_bytes_per_token: float
    donor_bytes_per_token: float
    new_token_share: float
    boundary_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BaseRow:
    """One text scored by the base model alone, with its own tokenizer (compare's reference row)."""

    text: str
    bytes: int
    base_bpb: float


@dataclass(frozen=True)
class HealRow:
    """One text before and after recovery training. held_out_bytes: the bytes scored (the in-file held-out end of
    a training text, or an unseen file, cut to eval_max_bytes); train_bytes: the part trained on (None for an
    unseen file); base and ratios: None when the base model was not scored."""

    text: str
    train_bytes: int | None
    held_out_bytes: int
    before_bpb: float
    after_bpb: float
    base_bpb: float | None = None
    before_ratio: float | None = None
    after_ratio: float | None = None


def geometric_mean(values: list[float]) -> float:
    """The mean of ratios (patched / base bits per byte): x2 on one text and x0.5 on another average to x1."""
    return math.exp(sum(math.log(v) for v in values) / len(values))


def text_labels(paths: list[Path] | tuple[Path, ...]) -> list[str]:
    """A unique label per text: its file name, with just enough parent folders to tell apart texts that
    share a name (a/text.txt and b/text.txt are two rows, never one)."""
    parts = [Path(p).parts for p in paths]
    labels = []
    for index, these in enumerate(parts):
        depth = 1
        while depth < len(these) and any(other != these and other[-depth:] == these[-depth:]
                                         for other in parts[:index] + parts[index + 1:]):
            depth += 1
        labels.append("/".join(these[-depth:]))
    return labels


def expand_text_paths(paths: list[Path] | tuple[Path, ...]) -> tuple[Path, ...]:
    """The text files a user named. A folder stands for every .txt and .md file inside it, subfolders included
    and hidden ones left out, sorted; a pattern the shell passed on unexpanded (quoted) for its matches, sorted.

    Raises:
        TokenSurgeonError: a folder without such files, or a pattern nothing matches.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise TokenSurgeonError(f"no {' or '.join(TEXT_SUFFIXES)} file in {path}")
            files += found
        elif not path.exists() and glob.has_magic(str(path)):
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not found:
                raise TokenSurgeonError(f"no file matches {path}")
            files += found
        else:
            files.append(path)
    return tuple(files)


def read_text_file(path: Path) -> str:
    """A text file's contents as UTF-8: a missing, unreadable, non-UTF-8 or empty file is one error line."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise TokenSurgeonError(f"text file {path} does not exist") from exc
    except OSError as exc:
        raise TokenSurgeonError(f"text file {path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise TokenSurgeonError(f"text file {path} is not UTF-8 text (byte {exc.start}: "
                                f"{exc.object[exc.start:exc.start + 1]!r}); convert it to UTF-8") from exc
    if not text.strip():
        raise TokenSurgeonError(f"text file {path} is empty; there is nothing to evaluate")
    return text


def read_eval_texts(paths: tuple[Path, ...], max_bytes: int | None) -> dict[str, str]:
    """label (file name; parent folders added when names repeat) -> text, cut to max_bytes UTF-8 bytes when
    given. Checked in full (UTF-8, not empty) so that a bad text fails before any slow step."""
    texts = {label: read_text_file(p) for label, p in zip(text_labels(list(paths)), paths)}
    return {label: truncate_utf8(text, max_bytes) for label, text in texts.items()} if max_bytes else texts


def evaluation_rows(pair: TokenizerPair, texts: dict[str, str], before: ModelScores,
                    after: ModelScores) -> list[EvalRow]:
    """One row per text from the base's and the patched model's scores."""
    rows = []
    for label, base_score, patched_score in zip(texts, before.scores, after.scores):
        stats = text_stats(label, texts[label], pair.alignment, pair.base_tokenizer, pair.donor_tokenizer)
        rows.append(EvalRow(text=label, bytes=base_score.n_bytes, base_bpb=base_score.bits_per_byte,
                            patched_bpb=patched_score.bits_per_byte,
                            ratio=patched_score.bits_per_byte / base_score.bits_per_byte,
                            base_bytes_per_token=base_score.bytes_per_token,
                            donor_bytes_per_token=patched_score.bytes_per_token,
                            new_token_share=stats.new_token_share, boundary_agreement=stats.boundary_agreement))
    return rows


def evaluate_pair(config: TransplantConfig, pair: TokenizerPair, patched: Path,
                  progress: Progress | None) -> list[EvalRow]:
    """Bits per byte of base (base tokenizer) and patched (donor tokenizer) on each --eval-text."""
    if not config.eval_texts:
        return []
    texts = read_eval_texts(config.eval_texts, config.eval_max_bytes)
    before, after = evaluate_models([config.base, patched], texts, device=config.device, progress=progress,
                                    names=[Path(config.base).name, Path(config.out).name],
                                    trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle)
    return evaluation_rows(pair, texts, before, after)
