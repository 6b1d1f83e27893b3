from __future__ import annotations

import pytest
import torch

from conftest import SMOLLM2_TOKENIZER, TOKENIZERS
from tokensurgeon.errors import MethodError
from tokensurgeon.methods import InitContext, get_init_method
from tokensurgeon.methods._shared.pieces import is_partial_utf8
from tokensurgeon.vocab.pair import load_pair


@pytest.fixture(scope="module")
def pair():
    return load_pair(SMOLLM2_TOKENIZER, TOKENIZERS / "mistral-v1")


def sparse_world(pair, untied: bool, device: str = "cpu"):
    """Donor rows of new tokens are exact 3-sparse mixes of anchor rows; base rows are a linear map
    of donor rows. OMP must then recover every new base row exactly."""
    generator = torch.Generator().manual_seed(0)
    alignment = pair.alignment
    donor = torch.randn(alignment.n_rows, 256, generator=generator)
    anchors = [i for i, kind in enumerate(alignment.match) if kind in ("exact", "bytes")]
    first = {}
    for i in anchors:  # donor tokens sharing one base row (e.g. "A" and <0x41>) share one donor row
        donor[i] = donor[first.setdefault(alignment.source[i], i)]
    mix_ids = torch.randint(0, len(anchors), (len(alignment.new_ids), 3), generator=generator)
    mix_weights = torch.rand(len(alignment.new_ids), 3, generator=generator) + 0.5
    anchor_rows = donor[anchors]
    donor[alignment.new_ids] = torch.einsum("bk,bkd->bd", mix_weights, anchor_rows[mix_ids])
    maps = [torch.randn(256, 16, generator=generator) for _ in range(2)]
    bases = []
    for linear in maps[: 2 if untied else 1]:
        base = torch.randn(pair.base_vocab.size, 16, generator=generator)
        base[[alignment.source[i] for i in anchors]] = anchor_rows @ linear
        bases.append(base)
    on = torch.device(device)
    ctx = InitContext(alignment, pair.base_vocab, pair.donor_vocab, bases[0].to(on),
                      bases[1].to(on) if untied else None, donor.to(on), None, on)
    expected = [donor[alignment.new_ids] @ linear for linear in maps]
    return ctx, expected


@pytest.mark.parametrize("untied", [False, True])
def test_exact_omp_recovers_sparse_mixtures(pair, untied):
    ctx, expected = sparse_world(pair, untied)
    result = get_init_method("omp", k=8, refresh=1).initialise(ctx)
    solved = [row for row, prov in enumerate(result.provenance) if prov.path == "omp"]
    assert len(solved) > 0.99 * len(ctx.new_ids)
    torch.testing.assert_close(result.embed[solved], expected[0][solved], rtol=1e-3, atol=1e-3)
    if untied:  # the head replays the same codes on the base head's anchors (the donor is tied)
        torch.testing.assert_close(result.head[solved], expected[1][solved], rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_omp_on_cuda_recovers_sparse_mixtures(pair):
    """Working copies on the GPU (as run_method makes them for --device cuda): codes solved and replayed there."""
    ctx, expected = sparse_world(pair, True, device="cuda")
    result = get_init_method("omp", k=8, refresh=1).initialise(ctx)
    solved = [row for row, prov in enumerate(result.provenance) if prov.path == "omp"]
    assert len(solved) > 0.99 * len(ctx.new_ids)
    torch.testing.assert_close(result.embed[solved].cpu(), expected[0][solved], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(result.head[solved].cpu(), expected[1][solved], rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_transplant_with_omp_on_cuda_writes_what_the_cpu_writes(tiny_models, tmp_path):
    """The whole pipeline on --device cuda (the audit and the writer after a method that ran on the GPU)."""
    from tokensurgeon.checkpoint import open_checkpoint, read_embeddings
    from tokensurgeon.config import TransplantConfig
    from tokensurgeon.pipeline.transplant import transplant

    rows = {}
    for device in ("cpu", "cuda"):
        transplant(TransplantConfig(base=tiny_models["tied"], donor=tiny_models["donor_llama2"], out=tmp_path / device,
                                    method="omp", device=device))
        rows[device] = read_embeddings(open_checkpoint(tmp_path / device))[0].float()
    close = ((rows["cuda"] - rows["cpu"]).abs().amax(dim=1) < 1e-2).float().mean()
    assert close > 0.95  # a near tie may pick another atom; bf16 ranking on the GPU moves some of those


def test_refreshed_omp_recovers_nearly_all(pair):
    """The default (correlate with every atom every few steps) may miss an atom outside its pool."""
    ctx, expected = sparse_world(pair, False)
    result = get_init_method("omp", k=8).initialise(ctx)
    solved = [row for row, prov in enumerate(result.provenance) if prov.path == "omp"]
    error = (result.embed[solved] - expected[0][solved]).abs().amax(dim=1)
    assert (error < 1e-3).float().mean() > 0.98
    prov = result.provenance[solved[0]]
    assert len(prov.sources) == 8 and len(prov.weights) == 8


def test_badly_explained_tokens_get_their_pieces_mean(pair):
    """Half of the new tokens get donor rows no anchor mix explains (fresh noise): those with base
    pieces take the subword-mean path; the sparse mixes keep their OMP rows."""
    ctx, _ = sparse_world(pair, False)
    noisy = ctx.new_ids[::2]
    ctx.donor_embed[noisy] = torch.randn(len(noisy), 256, generator=torch.Generator().manual_seed(1))
    result = get_init_method("omp", k=8, refresh=1).initialise(ctx)
    fallback = [row for row, prov in enumerate(result.provenance) if prov.path == "omp-residual-subword-mean"]
    assert {ctx.new_ids[row] for row in fallback} <= set(noisy)
    assert len(fallback) > 0.9 * sum(bool(ctx.alignment.decompositions.get(i)) for i in noisy)
    for row in fallback[:50]:
        prov = result.provenance[row]
        assert prov.residual > 0.5
        torch.testing.assert_close(result.embed[row], ctx.base_embed[prov.sources].mean(dim=0))
    relaxed = get_init_method("omp", k=8, refresh=1, max_residual=10.0).initialise(ctx)
    assert not any(prov.path == "omp-residual-subword-mean" for prov in relaxed.provenance)


def test_partial_utf8_detection():
    assert is_partial_utf8(" \xe0".encode("latin-1"))
    assert not is_partial_utf8(" à".encode())
    assert not is_partial_utf8(None)


def test_omp_options_are_validated():
    with pytest.raises(MethodError, match="at least 1"):
        get_init_method("omp", k=0)
    with pytest.raises(MethodError, match="max_residual"):
        get_init_method("omp", max_residual=0)
