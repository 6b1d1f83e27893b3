"""Options of each job as frozen dataclasses, with their defaults; the CLI reads them from here (heal's in
heal.py, re-exported).

Kept free of torch and transformers imports so the CLI can read defaults and stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TokenSurgeonError
from .heal import (CPU_BATCH_SIZE, DEFAULT_GUARD_TASKS, DEFAULT_HEAL_OBJECTIVE, DEFAULT_HEAL_TRAIN,  # noqa: F401
                   GENERATE_BATCH_SIZE, GENERATE_PROMPT_TOKENS, HEAL_OBJECTIVES, HEAL_ROWS, HEAL_TRAIN, MAX_AUTO_BATCH,
                   NO_GUARD, RETENTION_BYTES, RETENTION_GUARD, RETENTION_NEW_TOKENS, RETENTION_PROMPT_CHARS,
                   RETENTION_PROMPTS, HealConfig, check_chunk_terms, check_distill_terms,
                   guard_tasks_for)

DEFAULT_METHOD = "subword-mean"
UNDERTRAINED_NORM = 0.5  # a base row under this fraction of the median row norm counts as barely trained


MAX_PAD_TO_MULTIPLE = 65536
MAX_SEED = 2**32 - 1  # numpy's seed range; torch takes it too


def check_seed(seed: int) -> None:
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise TokenSurgeonError(f"--seed must be an integer from 0 to {MAX_SEED}, not {seed}")


@dataclass(frozen=True)
class AuditConfig:
    """Defaults of the transplant audit (evaluation/audit.py).

    Attributes:
        z: robust z (in MADs from the median) beyond which a score flags a row.
        min_spread: the least spread a z divides by (log units for ratios): near-equal rows flag nothing.
        neighbours: nearest shared tokens compared in the donor and the base space.
        neighbour_z: the robust z below the median at which neighbourhood agreement (a cosine) flags:
            cosines spread wide (MAD 0.11 on P1), so 6 MADs would lie below -0.2 and flag nothing.
        anchors: shared tokens searched for neighbours (the lowest donor ids): bounds the cost at 200k rows.
        block: rows scored at a time (memory: block x anchors floats).
        listed: flagged tokens listed in the report, worst first.
        warn_share: the share of computed rows flagged beyond which the transplant warns (P1: 1 of 3,004 rows;
            the omp draft for Gemma3 that accepted no proposal: 46,973 of 215,887).
    """

    z: float = 6.0
    min_spread: float = 0.05
    neighbours: int = 10
    neighbour_z: float = 4.0
    anchors: int = 8192
    block: int = 4096
    listed: int = 50
    warn_share: float = 0.05


@dataclass(frozen=True)
class OMPConfig:
    """Defaults of the OMP method (methods/omp.py) and of its solver (methods/_shared/sparse_coding.py).

    Attributes:
        k: anchors per new token.
        normalize_atoms: select anchors on unit rows (False: on the rows as stored).
        candidates: pool of most-correlated anchors searched per target (None: all).
        refresh, refresh_pool: steps between refreshes of the candidate pool, and its size.
        max_residual: a code leaving more of the donor row unexplained (relative) gets the pieces' mean.
        fast_select: bf16 correlations where the hardware has native bf16.
    """

    k: int = 64
    normalize_atoms: bool = False
    candidates: int | None = None
    refresh: int = 8
    refresh_pool: int = 64
    max_residual: float = 0.5
    fast_select: bool = True


@dataclass(frozen=True)
class TransplantConfig:
    """Options of one transplant.

    Attributes:
        method_options: keyword options of the method (e.g. {"k": 64} for omp).
        chat_template: "donor" keeps the donor tokenizer's template; "base" keeps the base model's.
        pad_to_multiple: round the embedding row count up (e.g. 64 or 128, as many checkpoints do).
        eval_max_bytes: evaluate only the first bytes of each text (quick runs).
        trust_remote_code: let transformers run model/tokenizer code shipped with BASE or DONOR.
        allow_pickle: read pytorch_model*.bin weights (weights-only unpickler) when there are no safetensors.
        allow_nonfinite: go on when an embedding holds NaN or inf (refused by default).
        corpus: text files for methods that learn from text (focus, tokenadapt, hypernet).
        draft_for: make BASE a speculative-decoding draft for this target model (it must be DONOR): exact
            row count, tokenizer, chat template and special ids of the target, verified (draft.py).
        recompute_undertrained: compute, not copy, shared tokens with barely trained base rows (vocab/undertrained.py).
    """

    base: Path
    donor: Path
    out: Path
    method: str | None = None  # None: DEFAULT_METHOD, drafts too (an omp draft accepted nothing: docs/speculative.md)
    method_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    chat_template: str = "donor"
    pad_to_multiple: int = 1
    eval_texts: tuple[Path, ...] = ()
    eval_max_bytes: int | None = None
    force: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    allow_nonfinite: bool = False
    corpus: tuple[Path, ...] = ()
    draft_for: Path | None = None
    recompute_undertrained: bool = False

    def __post_init__(self) -> None:
        if self.method is None:
            object.__setattr__(self, "method", DEFAULT_METHOD)
        if self.draft_for is not None:
            if Path(self.draft_for).resolve() != Path(self.donor).resolve():
                raise TokenSurgeonError(f"--as-draft-for {self.draft_for}: the target must also be the donor, "
                                        f"not {self.donor}; omit DONOR or pass the target twice")
            if self.chat_template != "donor":
                raise TokenSurgeonError("--as-draft-for takes the target's chat template; drop --chat-template base")
        if self.chat_template not in ("donor", "base"):
            raise TokenSurgeonError(f"--chat-template must be 'donor' or 'base', not {self.chat_template!r}")
        if self.pad_to_multiple < 1:
            raise TokenSurgeonError("--pad-to-multiple must be at least 1")
        if self.pad_to_multiple > MAX_PAD_TO_MULTIPLE:
            raise TokenSurgeonError(f"--pad-to-multiple {self.pad_to_multiple} is too large (at most "
                                    f"{MAX_PAD_TO_MULTIPLE}; checkpoints pad to 64 or 128)")
        check_seed(self.seed)
        if self.eval_max_bytes is not None and self.eval_max_bytes < 1:
            raise TokenSurgeonError("--eval-max-bytes must be positive")
        for text in self.eval_texts:
            if not Path(text).is_file():
                raise TokenSurgeonError(f"evaluation text {text} does not exist")
        for text in self.corpus:
            if not Path(text).is_file():
                raise TokenSurgeonError(f"corpus file {text} does not exist")

    def input_paths(self) -> list[Path]:
        """Every file or directory this transplant reads (the output must neither hold nor replace one)."""
        paths = [Path(self.base), Path(self.donor), *map(Path, self.eval_texts), *map(Path, self.corpus)]
        paths += [Path(value) for value in self.method_options.values()
                  if isinstance(value, (str, Path)) and Path(value).exists()]
        return paths


@dataclass(frozen=True)
class CompareConfig:
    """Options of a method bake-off (compare.py): every method on one base/donor pair, scored on texts.

    Attributes:
        methods: method names in the order to run; empty means every registered method.
        method_options: per method, its keyword options ({"omp": {"k": 32}}).
        out: keep the best model (and its report) here; None writes nothing.
        max_bytes: evaluate only the first bytes of each text.
        Other fields as in TransplantConfig.
    """

    base: Path
    donor: Path
    texts: tuple[Path, ...]
    methods: tuple[str, ...] = ()
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    out: Path | None = None
    max_bytes: int | None = None
    seed: int = 0
    device: str = "auto"
    corpus: tuple[Path, ...] = ()
    force: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    allow_nonfinite: bool = False

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if not self.texts:
            raise TokenSurgeonError("compare needs at least one --text to score the methods on")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise TokenSurgeonError("--max-bytes must be positive")
        unknown = sorted(set(self.method_options) - set(self.methods)) if self.methods else []
        if unknown:
            raise TokenSurgeonError(f"--option names method {unknown[0]!r}, which is not in --methods")

    def for_method(self, method: str, out: Path) -> TransplantConfig:
        """The transplant options of one entry (evaluation is compare's own: no eval texts here)."""
        return TransplantConfig(base=self.base, donor=self.donor, out=out, method=method,
                                method_options=self.method_options.get(method, {}), seed=self.seed,
                                device=self.device, corpus=self.corpus, force=self.force,
                                trust_remote_code=self.trust_remote_code, allow_pickle=self.allow_pickle,
                                allow_nonfinite=self.allow_nonfinite)


@dataclass(frozen=True)
class EvalConfig:
    """Options of a bits-per-byte evaluation (see evaluation/bpb.py for the windowing rules)."""

    context: int = 512
    stride: int | None = None
    batch_size: int = 8
    max_bytes: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.context < 2:
            raise TokenSurgeonError("--context must be at least 2 tokens")
        if self.batch_size < 1:
            raise TokenSurgeonError("--batch-size must be at least 1")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise TokenSurgeonError("--max-bytes must be positive")


@dataclass(frozen=True)
class HypernetConfig:
    """Training options of the hypernetwork (methods/_shared/hypernetwork.py); one set of defaults for `hypernet train` and
    for the copy `transplant --method hypernet` trains on the fly.

    Attributes:
        steps: warm-up steps (predict base tokens from their split into other base tokens).
        lm_steps: language-model steps on --corpus text with the base model frozen (0: warm-up only).
        width: transformer width; None: the model's hidden size on CUDA, at most 128 on CPU (3x faster than 256).
        max_pieces: longest decomposition the network reads; longer ones get the subword mean.
        expand: chance, per piece and round (two rounds), that a warm-up piece is split further, so
            the network also sees the 3-8 piece splits donor tokens have.
        holdout: share of base tokens kept out of training to measure reconstruction error.
        replace: LM stage: share of the distinct tokens in a batch whose rows the network supplies.
        aux_weight: LM stage: weight of the reconstruction loss beside the LM loss.
    """

    steps: int = 1000
    lm_steps: int = 0
    batch_size: int = 256
    lr: float = 1e-3
    layers: int = 2
    heads: int = 4
    width: int | None = None
    max_pieces: int = 16
    expand: float = 0.35
    holdout: float = 0.05
    seq_len: int = 64
    lm_batch: int = 4
    lm_lr: float = 2e-4
    replace: float = 0.3
    aux_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.steps, self.lm_steps) < 0 or min(self.batch_size, self.layers, self.heads, self.max_pieces,
                                                     self.seq_len, self.lm_batch) < 1:
            raise TokenSurgeonError("hypernet: steps must be >= 0 and sizes >= 1")
        if self.width is not None and (self.width < 1 or self.width % self.heads):
            raise TokenSurgeonError(f"hypernet: width {self.width} must be a positive multiple of heads {self.heads}")
        if not (0 <= self.holdout < 1 and 0 <= self.expand < 1 and 0 < self.replace <= 1):
            raise TokenSurgeonError("hypernet: holdout and expand must lie in [0, 1), replace in (0, 1]")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Options of a speculative-decoding measurement (see speculative.py).

    Attributes:
        k: draft tokens proposed per round (constant; transformers' own schedule would change it).
        prompts: prompts cut from the texts, spread evenly over them.
        prompt_tokens: target tokens per prompt (after BOS).
        max_new_tokens: greedy tokens generated per prompt.
        warmup_tokens: tokens generated once per model pair before timing (not counted).
        max_bytes: cut prompts from the first bytes of each text only.
    """

    k: int = 5
    prompts: int = 8
    prompt_tokens: int = 64
    max_new_tokens: int = 64
    warmup_tokens: int = 8
    max_bytes: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        for name, flag in (("k", "-k"), ("prompts", "--prompts"), ("prompt_tokens", "--prompt-tokens"),
                           ("max_new_tokens", "--new-tokens"), ("warmup_tokens", "warmup_tokens"),
                           ("max_bytes", "--max-bytes")):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TokenSurgeonError(f"{flag} must be at least 1")


EXPORT_DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """Bytes in "5GB", "500MB", "2GiB" or a plain number (transformers' max_shard_size convention)."""
    raw = str(text).strip().upper().replace(" ", "")
    digits = raw.rstrip("KMGTIB")
    unit = raw[len(digits):]
    try:
        value = float(digits)
    except ValueError:
        value = -1.0
    if unit not in _SIZE_UNITS or value <= 0:
        raise TokenSurgeonError(f"size {text!r} not understood; write e.g. 5GB, 500MB or 2GiB")
    return int(value * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class ExportConfig:
    """Options of one export (see export.py).

    Attributes:
        dtype: bf16, fp16 or fp32 for every floating tensor; None keeps each tensor's stored dtype.
        max_shard_size: largest shard written ("5GB"); source shards that fit and do not change are kept whole.
        embeddings_only: write a small patch (changed tensors, tokenizer, config, manifest) instead of a checkpoint.
        apply_to: turn the patch at ``source`` back into a full checkpoint on this base.
        link: hard-link unchanged shards instead of copying them (falls back to a copy across filesystems).
    """

    source: Path
    out: Path
    dtype: str | None = None
    max_shard_size: str = "5GB"
    embeddings_only: bool = False
    apply_to: Path | None = None
    link: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in EXPORT_DTYPES:
            raise TokenSurgeonError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, not {self.dtype!r}")
        parse_size(self.max_shard_size)
        if self.embeddings_only and self.apply_to is not None:
            raise TokenSurgeonError("--embeddings-only and --apply-to do not go together: the first cuts a patch, "
                                    "the second applies one")

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)

    @property
    def dtype_code(self) -> str | None:
        """The safetensors dtype name ("BF16") of --dtype, or None to keep stored dtypes."""
        return EXPORT_DTYPES[self.dtype] if self.dtype else None
