"""Speculative decoding measured on tiny real-tokenizer models: counts taken inside transformers' loop."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from conftest import CORPORA, SMOLLM2_TOKENIZER, build_tiny_model
from tokensurgeon.cli import app
from tokensurgeon.config import SpeculativeConfig
from tokensurgeon.evaluation.bpb import load_for_eval
from tokensurgeon.evaluation.speculative import SHARED, UNIVERSAL, cut_prompts, generate, speculative_benchmark

TEXTS = {"news": (CORPORA / "lee_news.txt").read_text(encoding="utf-8")[:4000]}
SMALL = SpeculativeConfig(k=4, prompts=2, prompt_tokens=16, max_new_tokens=12, warmup_tokens=2, device="cpu")


def replayed_acceptance(draft_path, prompts, expected, k):
    """What greedy assisted generation must accept, re-enacted: from each accepted prefix the draft proposes
    k greedy tokens (fewer near the end), the target keeps the prefix equal to its own greedy output."""
    draft, _ = load_for_eval(draft_path, device="cpu")
    proposed = accepted = 0
    for prompt, want in zip(prompts, expected):
        done = 0
        while done < len(want):
            guess, _ = generate(draft, prompt + want[:done], min(k, len(want) - done - 1)) if done < len(want) - 1 \
                else ([], 0.0)
            match = next((i for i, (a, b) in enumerate(zip(guess, want[done:])) if a != b), len(guess))
            proposed, accepted, done = proposed + len(guess), accepted + match, done + match + 1
    return proposed, accepted


def test_prompts_are_fixed_cuts_of_the_text(tiny_models):
    _, tokenizer = load_for_eval(tiny_models["tied"], device="cpu")
    prompts = cut_prompts(tokenizer, TEXTS, 3, 10)
    ids = tokenizer(TEXTS["news"], add_special_tokens=False)["input_ids"]
    assert [len(p) for p in prompts] == [11, 11, 11] and prompts[0] == [tokenizer.bos_token_id] + ids[:10]
    assert prompts[2][1:] == ids[-10:] and prompts == cut_prompts(tokenizer, TEXTS, 3, 10)


def test_draft_equal_to_target_accepts_everything(tiny_models):
    target = tiny_models["tied"]
    report = speculative_benchmark(target, [target], TEXTS, SMALL)
    run = report.runs[0]
    assert run.mode == SHARED and run.notes == [] and run.error is None
    assert run.proposed > 0 and run.acceptance_rate == 1.0 and run.identical == 2
    assert run.new_tokens == report.baseline_tokens == 24
    assert run.rounds == 2 * 3  # 12 tokens a prompt: rounds of 4 + 1, 4 + 1, then 1 proposal + 1


def test_counts_match_a_replay_and_output_is_unchanged(tiny_models, tmp_path):
    target = build_tiny_model(tmp_path / "target", SMOLLM2_TOKENIZER, tied=True, seed=3)
    draft = tiny_models["tied"]
    config = SpeculativeConfig(k=3, prompts=2, prompt_tokens=16, max_new_tokens=10, warmup_tokens=2, device="cpu")
    report = speculative_benchmark(target, [draft], TEXTS, config)
    run = report.runs[0]
    model, tokenizer = load_for_eval(target, device="cpu")
    prompts = cut_prompts(tokenizer, TEXTS, 2, 16)
    expected = [generate(model, prompt, 10)[0] for prompt in prompts]
    assert (run.proposed, run.accepted) == replayed_acceptance(draft, prompts, expected, 3)
    assert run.acceptance_rate < 1.0 and run.identical == 2


def test_other_vocabulary_goes_through_universal_assisted_generation(tiny_models):
    target, draft = tiny_models["donor_llama2"], tiny_models["tied"]
    config = SpeculativeConfig(k=3, prompts=1, prompt_tokens=12, max_new_tokens=6, warmup_tokens=1, device="cpu")
    run = speculative_benchmark(target, [draft], TEXTS, config).runs[0]
    assert run.mode == UNIVERSAL and run.error is None and run.identical == 1
    assert "embedding rows: target 32,064, draft 49,152" in run.notes


def test_cli_json_and_errors(tiny_models):
    target = str(tiny_models["tied"])
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--speculative", target, target, "--text", str(CORPORA / "lee_news.txt"),
                                 "--max-bytes", "3000", "--prompts", "1", "--prompt-tokens", "8", "--new-tokens", "5",
                                 "-k", "2", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["runs"][0]["acceptance_rate"] == 1.0 and data["baseline_tokens"] == 5 and data["k"] == 2
    result = runner.invoke(app, ["evaluate", "--speculative", target, "--text", str(CORPORA / "lee_news.txt")])
    assert result.exit_code == 2 and "at least one DRAFT" in result.output
    result = runner.invoke(app, ["evaluate", "--speculative", target, target, "--text", str(CORPORA / "lee_news.txt"),
                                 "-k", "0"])
    assert result.exit_code == 2 and "-k must be at least 1" in result.output


def test_help_shows_the_speculative_example():
    result = CliRunner().invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0 and "evaluate --speculative" in result.output
