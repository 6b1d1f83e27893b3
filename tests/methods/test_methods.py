from __future__ import annotations

import pytest
import torch

from conftest import SMOLLM2_TOKENIZER, TOKENIZERS
from tokensurgeon.config import DEFAULT_METHOD
from tokensurgeon.errors import MethodError
from tokensurgeon.methods import INIT_METHODS, InitContext, get_init_method, list_init_methods
from tokensurgeon.methods._shared.pieces import piece_means
from tokensurgeon.vocab.pair import load_pair


@pytest.fixture(scope="module")
def context_factory():
    pair = load_pair(SMOLLM2_TOKENIZER, TOKENIZERS / "mistral-v1")
    generator = torch.Generator().manual_seed(0)
    base_embed = torch.randn(pair.base_vocab.size, 16, generator=generator)
    base_head = torch.randn(pair.base_vocab.size, 16, generator=generator)
    donor_embed = torch.randn(pair.donor_vocab.size, 24, generator=generator)

    def make(untied: bool, dtype: torch.dtype = torch.float32) -> InitContext:
        return InitContext(pair.alignment, pair.base_vocab, pair.donor_vocab, base_embed.to(dtype),
                           base_head.to(dtype) if untied else None, donor_embed, None, torch.device("cpu"), seed=0)
    return make


def test_default_method_is_registered():
    assert DEFAULT_METHOD in INIT_METHODS


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Methods that cache what they train (hypernet, the corpus space) write here, not into the user's cache."""
    monkeypatch.setenv("TOKENSURGEON_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def required_options(tmp_path_factory):
    """Options a method cannot run without (wechsel: aligned word vectors, here a tiny file), or would run long
    without: the shape test needs rows, not good rows (hypernet: a short, narrow warm-up; omp: 4 atoms, a
    refresh each step)."""
    vectors = tmp_path_factory.mktemp("wechsel") / "aligned.vec"
    vectors.write_text("mundo 0 1 0\nworld 0 1 0.1\nthe 0 0 1\n")
    return lambda name: {"wechsel": {"vectors": str(vectors)}, "hypernet": {"steps": 5, "width": 32, "layers": 1,
                                                                             "batch_size": 64},
                         "omp": {"k": 4}}.get(name, {})


@pytest.mark.parametrize("name", list_init_methods())
@pytest.mark.parametrize("untied", [False, True])
def test_every_method_gives_finite_rows_of_the_right_shape(context_factory, required_options, name, untied):
    ctx = context_factory(untied)
    result = get_init_method(name, **required_options(name)).initialise(ctx)
    n_new = len(ctx.new_ids)
    assert result.embed.shape == (n_new, 16) and result.embed.dtype == torch.float32
    assert torch.isfinite(result.embed).all()
    assert len(result.provenance) == n_new
    if untied:
        assert result.head.shape == (n_new, 16) and torch.isfinite(result.head).all()
    else:
        assert result.head is None


def test_piece_means_and_fallback():
    matrix = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    fallback = torch.full((3,), -1.0)
    rows = piece_means(matrix, [(0, 2), (), (3,)], fallback)
    assert torch.equal(rows, torch.tensor([[3.0, 4.0, 5.0], [-1.0, -1.0, -1.0], [9.0, 10.0, 11.0]]))


def test_hewitt_is_seeded_and_near_the_mean(context_factory):
    ctx = context_factory(False)
    first = get_init_method("hewitt", scale=1e-2).initialise(ctx).embed
    again = get_init_method("hewitt", scale=1e-2).initialise(ctx).embed
    assert torch.equal(first, again)
    mean = ctx.base_mean(ctx.base_embed)
    assert (first - mean).norm(dim=1).mean() < 0.5 * (ctx.base_embed - mean).norm(dim=1).mean()
    assert first.std(dim=0).min() > 0  # samples, not the mean repeated


def test_unknown_method_and_option():
    with pytest.raises(MethodError, match="choose one of"):
        get_init_method("magic")
    with pytest.raises(MethodError, match="does not take"):
        get_init_method("zero", k=3)
    with pytest.raises(MethodError, match="scale must be positive"):
        get_init_method("hewitt", scale=-1)


@pytest.mark.parametrize("name", [n for n in list_init_methods() if getattr(INIT_METHODS[n], "upcasts_rows", False)])
def test_methods_that_upcast_accept_bf16_matrices(context_factory, required_options, name):
    """transplant hands such methods the checkpoint's bf16 matrices as they are (no float32 copy)."""
    ctx = context_factory(True, torch.bfloat16)
    result = get_init_method(name, **({"k": 8} if name == "omp" else required_options(name))).initialise(ctx)
    assert result.embed.shape == result.head.shape == (len(ctx.new_ids), 16)
    assert torch.isfinite(result.embed.float()).all() and torch.isfinite(result.head.float()).all()


def test_base_mean_is_computed_once_per_base_matrix(context_factory, monkeypatch):
    """base_embed's and base_head's mean rows are computed on first use (or given by the caller), then kept; any
    other matrix gets its own mean every time."""
    import tokensurgeon.methods.base as base_module

    ctx = context_factory(True)
    calls = []
    original = base_module.mean_rows
    monkeypatch.setattr(base_module, "mean_rows", lambda matrix, ids: calls.append(len(ids)) or original(matrix, ids))
    embed_mean = ctx.base_mean(ctx.base_embed)
    assert torch.equal(embed_mean, original(ctx.base_embed, ctx.defined_base_ids()))
    assert ctx.base_mean(ctx.base_embed) is embed_mean and len(calls) == 1
    ctx.base_mean(ctx.base_head)
    ctx.base_mean(ctx.base_head.clone())
    ctx.base_mean(ctx.base_head.clone())
    assert len(calls) == 4 and set(ctx.base_means) == {"embed", "head"}
    given = torch.zeros(16)
    fresh = context_factory(True)
    fresh.base_means["embed"] = given
    assert fresh.base_mean(fresh.base_embed) is given
