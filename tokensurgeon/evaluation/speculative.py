"""Speculative decoding, measured: how many of a draft's proposals the target keeps, and what that buys.

Greedy assisted generation in transformers: each round the draft proposes k tokens, the target scores
them in one forward pass and keeps the longest prefix equal to its own greedy choices, plus one token of
its own. The counts come from inside that loop (the candidate generator transformers builds is wrapped
for the run), so they are what transformers did, not a re-enactment:

* acceptance rate = accepted draft tokens / proposed draft tokens;
* mean accepted length = accepted draft tokens per round (0..k); each round also yields the target's token.

Throughput is wall-clock new tokens per second over the same prompts with and without the draft, after a
warm-up call. Greedy assisted output must equal the target's plain greedy output; ``identical`` counts the
prompts where it does. A draft whose ``vocab_size`` differs from the target's is paired the way
transformers pairs it, through universal assisted generation (text re-encoded between the tokenizers).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..checkpoint.model_config import config_token_ids
from ..config import SpeculativeConfig
from ..errors import TokenSurgeonError
from ..pipeline.draft import check_draft_compatible
from ..runtime.devices import resolve_device
from ..runtime.progress import Progress
from ..runtime.quiet import quiet_transformers
from .bpb import context_prefix, load_for_eval, truncate_utf8

SHARED, UNIVERSAL = "shared vocabulary", "universal (re-encoded)"


@dataclass
class DraftRun:
    """One draft's assisted generation over every prompt."""

    draft: str
    mode: str
    proposed: int = 0
    accepted: int = 0
    rounds: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    identical: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def shared_vocabulary(self) -> bool:
        """Whether the draft proposes target token ids directly (else its text is re-encoded)."""
        return self.mode == SHARED

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.proposed if self.proposed else None

    @property
    def mean_accepted(self) -> float | None:
        return self.accepted / self.rounds if self.rounds else None

    @property
    def tokens_per_second(self) -> float | None:
        return self.new_tokens / self.seconds if self.seconds else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"acceptance_rate": self.acceptance_rate, "mean_accepted": self.mean_accepted,
                               "tokens_per_second": self.tokens_per_second}


@dataclass
class SpeculativeReport:
    target: str
    device: str
    k: int
    prompts: int
    prompt_tokens: int
    max_new_tokens: int
    baseline_tokens: int
    baseline_seconds: float
    runs: list[DraftRun]

    @property
    def baseline_tokens_per_second(self) -> float:
        return self.baseline_tokens / self.baseline_seconds if self.baseline_seconds else 0.0

    def speedup(self, run: DraftRun) -> float | None:
        return run.tokens_per_second / self.baseline_tokens_per_second if run.tokens_per_second else None

    def to_dict(self) -> dict[str, Any]:
        data = {key: value for key, value in asdict(self).items() if key != "runs"}
        return data | {"baseline_tokens_per_second": self.baseline_tokens_per_second,
                       "runs": [run.to_dict() | {"speedup": self.speedup(run)} for run in self.runs]}


def cut_prompts(tokenizer: Any, texts: dict[str, str], n_prompts: int, prompt_tokens: int) -> list[list[int]]:
    """n_prompts prompts of prompt_tokens target tokens (after the BOS the evaluation also uses), spread
    over the texts in turn and evenly over each text: the same prompts on every run."""
    encoded = {label: tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
               for label, text in texts.items()}
    for label, ids in encoded.items():
        if len(ids) < prompt_tokens:
            raise TokenSurgeonError(f"{label}: {len(ids)} tokens, fewer than --prompt-tokens {prompt_tokens}")
    labels, prefix, prompts = list(encoded), context_prefix(tokenizer), []
    for index, label in enumerate(labels):
        count = n_prompts // len(labels) + (index < n_prompts % len(labels))
        room = len(encoded[label]) - prompt_tokens
        for j in range(count):
            start = room * j // max(count - 1, 1)
            prompts.append(prefix + encoded[label][start:start + prompt_tokens])
    return prompts


@contextlib.contextmanager
def counting_rounds(model: Any) -> Iterator[dict[str, int]]:
    """Count, inside transformers' assisted-generation loop, the draft tokens each round proposes and keeps.

    Wraps the candidate generator that ``model.generate`` builds: ``get_candidates`` returns the prompt plus
    the proposed tokens (in the target's ids), ``update_candidate_strategy`` receives the number accepted.
    """
    counts = {"proposed": 0, "accepted": 0, "rounds": 0}
    build = model._get_candidate_generator

    def counted(*args: Any, **kwargs: Any) -> Any:
        generator = build(*args, **kwargs)
        propose, update = generator.get_candidates, generator.update_candidate_strategy

        def get_candidates(input_ids: torch.Tensor, **more: Any) -> Any:
            candidates, logits = propose(input_ids, **more)
            counts["proposed"] += candidates.shape[1] - input_ids.shape[1]
            counts["rounds"] += 1
            return candidates, logits

        def update_candidate_strategy(input_ids: torch.Tensor, scores: torch.Tensor, num_matches: int) -> Any:
            counts["accepted"] += int(num_matches)
            return update(input_ids, scores, num_matches)

        generator.get_candidates, generator.update_candidate_strategy = get_candidates, update_candidate_strategy
        return generator

    model._get_candidate_generator = counted
    try:
        yield counts
    finally:
        del model._get_candidate_generator


def generate(model: Any, prompt: list[int], max_new_tokens: int, **assist: Any) -> tuple[list[int], float]:
    """Greedy new tokens for one prompt and the wall-clock seconds they took."""
    ids = torch.tensor([prompt], device=model.device)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.inference_mode(), quiet_transformers():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, **assist)
    sync()
    return out[0, len(prompt):].tolist(), time.perf_counter() - start


def set_draft_length(draft: Any, k: int) -> None:
    """Exactly k proposals a round: transformers reads these from the draft's own generation config, and by
    default grows k on success and stops drafting below 40% confidence."""
    draft.generation_config.num_assistant_tokens = k
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0


def run_draft(target: tuple[Path, Any, Any], draft_path: Path, prompts: list[list[int]],
              expected: list[list[int]], config: SpeculativeConfig, device: torch.device,
              progress: Progress | None, trust_remote_code: bool) -> DraftRun:
    """Assisted generation with one draft (target: path, model, tokenizer) over every prompt, counted and timed."""
    target_path, target, target_tokenizer = target
    same_size = config_token_ids(target_path)["vocab_size"] == config_token_ids(draft_path)["vocab_size"]
    run = DraftRun(str(draft_path), SHARED if same_size else UNIVERSAL,
                   notes=check_draft_compatible(target_path, draft_path, trust_remote_code=trust_remote_code))
    draft, draft_tokenizer = load_for_eval(draft_path, device=device, trust_remote_code=trust_remote_code)
    set_draft_length(draft, config.k)
    assist = {"assistant_model": draft}
    if not same_size:
        assist |= {"tokenizer": target_tokenizer, "assistant_tokenizer": draft_tokenizer}
    try:
        generate(target, prompts[0], config.warmup_tokens, **assist)
    except Exception as exc:  # noqa: BLE001 - universal pairing is transformers' feature: report why it failed
        if same_size:
            raise
        run.error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        return run
    for index, (prompt, want) in enumerate(zip(prompts, expected)):
        with counting_rounds(target) as counts:
            tokens, seconds = generate(target, prompt, config.max_new_tokens, **assist)
        run.proposed += counts["proposed"]
        run.accepted += counts["accepted"]
        run.rounds += counts["rounds"]
        run.new_tokens += len(tokens)
        run.seconds += seconds
        run.identical += tokens == want
        if progress:
            progress(Path(draft_path).name, index + 1, len(prompts))
    return run


def speculative_benchmark(target_path: Path, draft_paths: list[Path], texts: dict[str, str],
                          config: SpeculativeConfig = SpeculativeConfig(), *, progress: Progress | None = None,
                          trust_remote_code: bool = False) -> SpeculativeReport:
    """The target alone, then with each draft, on the same prompts cut from texts (label -> text)."""
    device = resolve_device(config.device)
    target, tokenizer = load_for_eval(target_path, device=device, trust_remote_code=trust_remote_code)
    if config.max_bytes:
        texts = {label: truncate_utf8(text, config.max_bytes) for label, text in texts.items()}
    prompts = cut_prompts(tokenizer, texts, config.prompts, config.prompt_tokens)
    generate(target, prompts[0], config.warmup_tokens)
    expected, seconds = [], 0.0
    for index, prompt in enumerate(prompts):
        tokens, took = generate(target, prompt, config.max_new_tokens)
        expected.append(tokens)
        seconds += took
        if progress:
            progress("target", index + 1, len(prompts))
    runs = [run_draft((Path(target_path), target, tokenizer), Path(path), prompts, expected, config, device, progress, trust_remote_code)
            for path in draft_paths]
    return SpeculativeReport(str(target_path), str(device), config.k, len(prompts), config.prompt_tokens,
                             config.max_new_tokens, sum(map(len, expected)), seconds, runs)
