"""Bits-per-byte scoring: exact on a uniform model, every token scored once, padding-proof."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.evaluation.bpb import evaluate_models, load_for_eval, plan_windows, score_text, truncate_utf8
from tokensurgeon.runtime.devices import resolve_device

from conftest import SHARED

ENGLISH = (SHARED / "corpora" / "enwiki_head.txt").read_text(encoding="utf-8")[:1500]
JAPANESE = (SHARED / "corpora" / "udhr" / "jpn.txt").read_text(encoding="utf-8")[:400]


def tiny_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         initializer_range=0.2)  # far from uniform, so context matters
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(SHARED / "tokenizers" / "gpt2")


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(len(tokenizer))


def n_text_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def test_uniform_model_scores_log2_vocab_per_token(tokenizer):
    uniform = tiny_model(len(tokenizer))
    with torch.no_grad():
        uniform.get_input_embeddings().weight.zero_()  # tied: the head is zero too
    score = score_text(uniform, tokenizer, ENGLISH, context=64)
    n_tokens = n_text_tokens(tokenizer, ENGLISH)
    expected = n_tokens * math.log2(len(tokenizer)) / len(ENGLISH.encode("utf-8"))
    assert score.n_tokens == n_tokens
    assert score.bits_per_byte == pytest.approx(expected, abs=1e-4)


def test_matches_the_models_own_loss_when_one_window_holds_the_text(model, tokenizer):
    text = ENGLISH[:600]
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False).input_ids
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    score = score_text(model, tokenizer, text, context=512)
    assert score.nll_bits == pytest.approx(loss * (len(ids) - 1) / math.log(2), rel=1e-5)


@pytest.mark.parametrize(("context", "stride"), [(16, None), (16, 1), (16, 15), (33, 7), (512, None)])
def test_every_token_is_scored_once(model, tokenizer, context, stride):
    score = score_text(model, tokenizer, ENGLISH[:300], context=context, stride=stride)
    assert score.n_tokens == n_text_tokens(tokenizer, ENGLISH[:300])
    assert score.n_bytes == len(ENGLISH[:300].encode("utf-8"))


def test_plan_windows_cover_each_token_once():
    windows = plan_windows(n_tokens=100, span=15, stride=6, first_scored=0)
    scored = [j for window in windows for j in range(window.first_scored, window.end)]
    assert scored == list(range(100))
    assert all(window.end - window.start <= 15 for window in windows)


def test_stride_is_irrelevant_when_the_text_fits_one_window(model, tokenizer):
    text = ENGLISH[:300]
    unstrided = score_text(model, tokenizer, text, context=512, stride=511)
    strided = score_text(model, tokenizer, text, context=512, stride=3)
    assert strided == unstrided


def test_padding_does_not_change_scores(model, tokenizer):
    text = ENGLISH[:400]
    windows = plan_windows(n_text_tokens(tokenizer, text), span=23, stride=9, first_scored=0)
    assert len(windows) % 4 != 1 and windows[-1].end - windows[-1].start < 23  # a padded batch
    alone = score_text(model, tokenizer, text, context=24, stride=9, batch_size=1)
    batched = score_text(model, tokenizer, text, context=24, stride=9, batch_size=4)
    assert batched.n_tokens == alone.n_tokens
    assert batched.bits_per_byte == pytest.approx(alone.bits_per_byte, rel=1e-5)


def test_bytes_count_multibyte_utf8(model, tokenizer):
    score = score_text(model, tokenizer, JAPANESE, context=128)
    assert score.n_bytes == len(JAPANESE.encode("utf-8")) > 2 * len(JAPANESE)
    assert score.bytes_per_token == pytest.approx(score.n_bytes / score.n_tokens)
    assert score.bits_per_byte == pytest.approx(score.nll_bits / score.n_bytes)


def test_without_bos_or_eos_the_first_token_and_its_bytes_are_left_out(model):
    bare = AutoTokenizer.from_pretrained(SHARED / "tokenizers" / "gpt2")
    bare.bos_token, bare.eos_token = None, None
    text = "Hello world, again and again."
    score = score_text(model, bare, text, context=8, stride=3)
    assert score.n_tokens == n_text_tokens(bare, text) - 1
    assert score.n_bytes == len(text) - len("Hello")


def test_max_bytes_cuts_at_a_character_boundary(model, tokenizer):
    text = "ab" + "日本語" * 10  # 3-byte characters after 2 ASCII bytes
    assert truncate_utf8(text, 6) == "ab日"
    assert truncate_utf8(text, 7) == "ab日"
    assert truncate_utf8(text, 8) == "ab日本"
    score = score_text(model, tokenizer, text, max_bytes=10)
    assert score.n_bytes == 8


def test_bad_settings_are_user_errors(model, tokenizer):
    with pytest.raises(TokenSurgeonError, match="stride"):
        score_text(model, tokenizer, ENGLISH, context=16, stride=16)
    with pytest.raises(TokenSurgeonError, match="batch size"):
        score_text(model, tokenizer, ENGLISH, batch_size=0)
    with pytest.raises(TokenSurgeonError, match="embedding rows"):
        score_text(tiny_model(1000), tokenizer, ENGLISH[:200])
    with pytest.raises(TokenSurgeonError, match="nothing to score"):
        score_text(model, tokenizer, "")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TokenSurgeonError, match="unknown device"):
        resolve_device("abacus")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_resolve_device_cuda_without_cuda_is_a_user_error():
    with pytest.raises(TokenSurgeonError, match="no CUDA device"):
        resolve_device("cuda")


def test_evaluate_models_loads_saved_checkpoints(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    texts = {"en": ENGLISH[:500], "ja": JAPANESE[:100]}
    calls = []
    [result] = evaluate_models([tmp_path / "tiny"], texts, device="cpu", context=32,
                               progress=lambda name, done, total: calls.append((name, done, total)))
    assert [score.label for score in result.scores] == ["en", "ja"]
    assert result.scores[0] == score_text(model, tokenizer, texts["en"], label="en", context=32)
    assert calls[-1][0] == "tiny/ja" and calls[-1][1] == calls[-1][2]
    assert result.to_dict()["scores"][1]["label"] == "ja"


def test_load_failure_names_the_path(tmp_path):
    with pytest.raises(TokenSurgeonError, match=str(tmp_path / "missing")):
        load_for_eval(tmp_path / "missing", device=torch.device("cpu"))


def test_windows_never_exceed_the_models_positions(tokenizer, model):
    """A model with fewer positions than the default context is scored in windows of its own length
    (it used to be refused, so transplant could not evaluate such a model at all)."""
    short = tiny_model(len(tokenizer))
    short.config.max_position_embeddings = 64
    clamped = score_text(short, tokenizer, ENGLISH)  # default context 512
    explicit = score_text(short, tokenizer, ENGLISH, context=64)
    assert clamped == explicit
    assert n_text_tokens(tokenizer, ENGLISH) > 64  # so the windows really were cut
