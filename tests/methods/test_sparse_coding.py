from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import orthogonal_mp

from tokensurgeon.methods._shared import pursuits, sparse_coding
from tokensurgeon.methods._shared.sparse_coding import OMPResult, selection_atoms
from tokensurgeon.methods._shared.sparse_coding import batch_omp as solver_batch_omp
from tokensurgeon.methods._shared.sparse_coding import omp_batches as solver_omp_batches
from tokensurgeon.runtime.matmul import fast_selection_dtype

# These tests check the solver against textbook OMP (sklearn: unit atoms, the correlations refreshed every
# step); the product defaults (config.OMPConfig, shared with the omp method) are set per test where they matter.
batch_omp = functools.partial(solver_batch_omp, normalize_atoms=True, refresh=1)
omp_batches = functools.partial(solver_omp_batches, normalize_atoms=True)


def problem(seed: int, n_atoms: int = 300, dim: int = 64, batch: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets (B, D) and a dictionary (N, D) whose rows have norms between 0.5 and 1.5."""
    generator = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(n_atoms, dim, generator=generator) * (0.5 + torch.rand(n_atoms, 1, generator=generator))
    return torch.randn(batch, dim, generator=generator), dictionary


@pytest.fixture(params=["gram", "no-gram"])
def path(request, monkeypatch) -> str:
    """Run a test on Batch-OMP with the Gram and on the residual path taken when no Gram fits."""
    if request.param == "no-gram":
        monkeypatch.setattr(sparse_coding, "gram_fits", lambda n_atoms, device: False)
    return request.param


def sklearn_codes(targets: torch.Tensor, dictionary: torch.Tensor, k: int, normalize: bool) -> np.ndarray:
    """(B, N) float64 coefficients for the original atoms, from sklearn's column-wise OMP."""
    atoms = dictionary.double().numpy()
    norms = np.linalg.norm(atoms, axis=1) if normalize else np.ones(len(atoms))
    codes = orthogonal_mp((atoms / norms[:, None]).T, targets.double().numpy().T, n_nonzero_coefs=k)
    return codes.T / norms[None, :]


def assert_matches_sklearn(result: OMPResult, reference: np.ndarray) -> None:
    for row, indices in enumerate(result.indices.tolist()):
        assert set(indices) == set(np.flatnonzero(reference[row]).tolist()), f"support differs in row {row}"
    expected = np.take_along_axis(reference, result.indices.numpy(), axis=1)
    np.testing.assert_allclose(result.coefficients.numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 16])
def test_matches_sklearn_with_unit_atoms(path, k):
    targets, dictionary = problem(seed=k)
    result = batch_omp(targets, dictionary, k)
    assert result.indices.shape == result.coefficients.shape == (20, k)
    assert result.indices.dtype == torch.long and result.coefficients.dtype == torch.float32
    assert_matches_sklearn(result, sklearn_codes(targets, dictionary, k, normalize=True))


def test_matches_sklearn_with_raw_atoms(path):
    targets, dictionary = problem(seed=7)
    result = batch_omp(targets, dictionary, 8, normalize_atoms=False)
    assert_matches_sklearn(result, sklearn_codes(targets, dictionary, 8, normalize=False))


def test_normalising_changes_the_choice_towards_short_atoms():
    # Atom 0 is long but poorly aligned with the target; atom 1 is short and exactly aligned.
    dictionary = torch.tensor([[10.0, 6.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 1.0]])
    target = torch.tensor([[1.0, 0.0, 0.0]])
    assert batch_omp(target, dictionary, 1).indices.item() == 1
    assert batch_omp(target, dictionary, 1, normalize_atoms=False).indices.item() == 0
    assert batch_omp(target, dictionary, 1).coefficients.item() == pytest.approx(10.0, rel=1e-5)


def test_residual_norm_is_that_of_the_returned_code(path):
    targets, dictionary = problem(seed=3)
    result = batch_omp(targets, dictionary, 10)
    reconstruction = torch.einsum("bk,bkd->bd", result.coefficients, dictionary[result.indices])
    torch.testing.assert_close(result.residual_norm, (targets - reconstruction).norm(dim=1), rtol=1e-5, atol=1e-5)


def test_exact_sparse_combinations_are_recovered_on_every_path(monkeypatch):
    generator = torch.Generator().manual_seed(11)
    n_atoms, dim, batch, k = 300, 64, 12, 5
    dictionary = torch.randn(n_atoms, dim, generator=generator)
    support = torch.stack([torch.randperm(n_atoms, generator=generator)[:k] for _ in range(batch)])  # (B, k)
    weights = (1 + torch.rand(batch, k, generator=generator)) * torch.sign(torch.randn(batch, k, generator=generator))
    targets = torch.einsum("bk,bkd->bd", weights, dictionary[support])
    # Pool just large enough to hold every target's true atoms, ranked by |initial correlation|.
    atoms, _ = selection_atoms(dictionary, True)
    ranks = (targets @ atoms.T).abs().argsort(dim=1, descending=True).argsort(dim=1)  # (B, N)
    pool = max(k, int(ranks.gather(1, support).max()) + 1)
    assert pool < n_atoms
    runs = {"exact": batch_omp(targets, dictionary, k),
            "candidates": batch_omp(targets, dictionary, k, candidates=pool)}
    monkeypatch.setattr(sparse_coding, "gram_fits", lambda n_atoms, device: False)
    runs["no-gram"] = batch_omp(targets, dictionary, k)
    runs["candidates, no gram"] = batch_omp(targets, dictionary, k, candidates=pool)
    runs["refreshed, bf16 ranking"] = omp_batches(targets, dictionary, k, device="cpu", refresh=2,
                                                  select_dtype=torch.bfloat16)
    for name, result in runs.items():
        assert [set(row) for row in result.indices.tolist()] == [set(row) for row in support.tolist()], name
        assert (result.residual_norm / targets.norm(dim=1)).max() < 1e-4, name
        order = result.indices.argsort(dim=1)
        torch.testing.assert_close(result.coefficients.gather(1, order),
                                   weights.gather(1, support.argsort(dim=1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("refresh, refresh_pool", [(4, 300), (1, 3)])
def test_refreshed_path_matches_sklearn_where_its_pool_cannot_miss(monkeypatch, refresh, refresh_pool):
    """A pool of every atom, or a pool refreshed every step, always holds exact OMP's next pick."""
    monkeypatch.setattr(sparse_coding, "gram_fits", lambda n_atoms, device: False)
    targets, dictionary = problem(seed=21)
    result = solver_omp_batches(targets, dictionary, 9, device="cpu", normalize_atoms=True, refresh=refresh,
                                refresh_pool=refresh_pool, batch_size=7)
    assert_matches_sklearn(result, sklearn_codes(targets, dictionary, 9, normalize=True))


def test_refreshed_path_over_many_blocks_of_atoms_matches_sklearn_when_refreshed_every_step(monkeypatch):
    """17,000 atoms (not a whole number of ranking blocks): pools come from block maxima and the padding columns
    are never chosen; refreshed every step, every pick is exact OMP's."""
    monkeypatch.setattr(sparse_coding, "gram_fits", lambda n_atoms, device: False)
    targets, dictionary = problem(seed=11, n_atoms=17000, batch=7)
    result = solver_omp_batches(targets, dictionary, 9, device="cpu", normalize_atoms=True, refresh=1,
                                refresh_pool=4, batch_size=4)
    assert result.indices.max() < 17000
    assert_matches_sklearn(result, sklearn_codes(targets, dictionary, 9, normalize=True))


@pytest.mark.parametrize("size", [1, 8, 10, 40])
def test_pool_holds_each_rows_largest_scores(size):
    """Block maxima first, then a top-k over the blocks chosen (or a plain top-k where blocks are few): the values
    are a full top-k's, largest first, on bf16 scores full of ties."""
    scores = torch.rand(6, 40 * pursuits._RANK_BLOCK, generator=torch.Generator().manual_seed(size)).bfloat16()
    ids = pursuits._pool(pursuits._as_ordered_ints(scores), size)
    assert all(len(set(row)) == size for row in ids.tolist())
    assert torch.equal(scores.gather(1, ids), scores.float().topk(size, dim=1).values.bfloat16())


def test_ranking_matrix_is_the_transposed_atoms_padded_to_whole_blocks():
    n_atoms = 2 * pursuits._RANK_BLOCK + 7  # two whole blocks and part of a third
    atoms = torch.randn(n_atoms, 16, generator=torch.Generator().manual_seed(0))
    ranking = pursuits.ranking_matrix(atoms, torch.bfloat16)
    assert ranking.shape == (16, 3 * pursuits._RANK_BLOCK) and ranking.is_contiguous()
    assert torch.equal(ranking[:, :n_atoms], atoms.T.bfloat16()) and not ranking[:, n_atoms:].any()


def test_float32_ranking_is_a_view_of_the_float32_atoms():
    """No second copy of the anchors: float32 ranks through the atoms' own rows, which the solver gathers from."""
    atoms = torch.randn(2 * pursuits._RANK_BLOCK + 7, 16, generator=torch.Generator().manual_seed(0))
    ranking = pursuits.ranking_matrix(atoms, torch.float32)
    assert ranking.shape == (16, atoms.shape[0]) and ranking.data_ptr() == atoms.data_ptr()
    assert pursuits.ranked_rows(ranking) is not None and pursuits.ranked_rows(ranking).data_ptr() == atoms.data_ptr()
    upcast = pursuits.ranked_rows(pursuits.ranking_matrix(atoms.bfloat16(), torch.float32))  # one float32 copy
    assert upcast.dtype == torch.float32 and torch.equal(upcast, atoms.bfloat16().float())
    assert pursuits.ranked_rows(pursuits.ranking_matrix(atoms, torch.bfloat16)) is None


def test_float32_ranking_of_bf16_anchors_solves_as_their_float32_values(monkeypatch):
    """bf16 anchors ranked in float32 are upcast once and solved from that copy: exactly the codes of the same
    values handed over in float32, on the refreshed path (N not a whole number of ranking blocks)."""
    monkeypatch.setattr(sparse_coding, "gram_fits", lambda n_atoms, device: False)
    targets, dictionary = problem(6, n_atoms=3 * pursuits._RANK_BLOCK + 5, dim=64, batch=32)
    low = omp_batches(targets, dictionary.bfloat16(), 12, device="cpu", refresh=4, refresh_pool=16)
    full = omp_batches(targets, dictionary.bfloat16().float(), 12, device="cpu", refresh=4, refresh_pool=16)
    assert torch.equal(low.indices, full.indices) and torch.equal(low.coefficients, full.coefficients)
    assert (full.residual_norm / targets.norm(dim=1)).mean() < 0.7  # a real fit (zero codes leave 1.0)


def test_bf16_ranking_leaves_the_residual_of_float32_ranking(monkeypatch):
    """bf16 only ranks atoms into the pools; the codes are solved in float32 and nearly as good."""
    monkeypatch.setattr(sparse_coding, "gram_fits", lambda n_atoms, device: False)
    targets, dictionary = problem(5, n_atoms=2000, dim=64, batch=64)
    full = omp_batches(targets, dictionary, 16, device="cpu", refresh=4, refresh_pool=16)
    fast = omp_batches(targets, dictionary, 16, device="cpu", refresh=4, refresh_pool=16, select_dtype=torch.bfloat16)
    assert fast.coefficients.dtype == torch.float32
    assert fast.residual_norm.mean() < 1.02 * full.residual_norm.mean()
    overlap = [len(set(a) & set(b)) for a, b in zip(fast.indices.tolist(), full.indices.tolist())]
    assert sum(overlap) / (16 * len(overlap)) > 0.8


def test_candidates_equal_exact_when_the_pool_holds_the_exact_picks():
    targets, dictionary = problem(seed=1)
    k = 5
    exact = batch_omp(targets, dictionary, k)
    atoms, _ = selection_atoms(dictionary, True)
    ranks = (targets @ atoms.T).abs().argsort(dim=1, descending=True).argsort(dim=1)  # (B, N)
    needed = ranks.gather(1, exact.indices).max(dim=1).values + 1  # (B,)
    assert (needed < dictionary.shape[0]).all()
    for row, pool in enumerate(needed.tolist()):
        pooled = batch_omp(targets[row:row + 1], dictionary, k, candidates=max(pool, k))
        assert pooled.indices[0].tolist() == exact.indices[row].tolist()
        torch.testing.assert_close(pooled.coefficients[0], exact.coefficients[row], rtol=1e-5, atol=1e-6)


def test_candidates_can_miss_what_the_full_search_finds():
    targets, dictionary = problem(seed=2)
    exact = batch_omp(targets, dictionary, 16)
    pooled = batch_omp(targets, dictionary, 16, candidates=16)
    assert not torch.equal(pooled.indices.sort(dim=1).values, exact.indices.sort(dim=1).values)
    assert (pooled.residual_norm >= exact.residual_norm - 1e-5).float().mean() > 0.5


def test_gram_passed_in_gives_the_same_codes():
    targets, dictionary = problem(seed=4)
    atoms, _ = selection_atoms(dictionary, True)
    given_gram = batch_omp(targets, dictionary, 6, gram=atoms @ atoms.T)
    built_here = batch_omp(targets, dictionary, 6)
    assert torch.equal(given_gram.indices, built_here.indices)
    torch.testing.assert_close(given_gram.coefficients, built_here.coefficients)


def test_k_above_the_number_of_atoms_raises():
    targets, dictionary = problem(seed=0, n_atoms=10)
    with pytest.raises(ValueError, match="k=11 .* N=10"):
        batch_omp(targets, dictionary, 11)
    with pytest.raises(ValueError, match="k=11"):
        omp_batches(targets, dictionary, 11, device="cpu")


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, "k=0"),
    ({"k": 5, "candidates": 4}, "candidates=4"),
    ({"k": 5, "gram": torch.eye(3)}, "gram must be"),
])
def test_bad_arguments_raise(kwargs, message):
    targets, dictionary = problem(seed=0, n_atoms=10)
    with pytest.raises(ValueError, match=message):
        batch_omp(targets, dictionary, **kwargs)


def test_dimension_mismatch_raises():
    with pytest.raises(ValueError, match="share D"):
        batch_omp(torch.zeros(2, 4), torch.zeros(10, 5), 1)


def test_zero_target_gets_zero_coefficients(path):
    targets, dictionary = problem(seed=5)
    targets[3] = 0
    result = batch_omp(targets, dictionary, 8)
    assert torch.equal(result.coefficients[3], torch.zeros(8))
    assert result.residual_norm[3] == 0
    assert len(set(result.indices[3].tolist())) == 8
    assert (result.coefficients[:3] != 0).all()


@pytest.mark.parametrize("candidates", [None, 50])
def test_ties_go_to_the_lowest_atom_index(path, candidates):
    _, dictionary = problem(seed=5)
    result = batch_omp(torch.zeros(2, 64), dictionary, 6, candidates=candidates)
    assert result.indices.tolist() == [list(range(6))] * 2


def test_dependent_and_duplicate_atoms_stay_finite_and_distinct(path):
    generator = torch.Generator().manual_seed(6)
    base = torch.randn(4, 3, generator=generator)
    # Duplicates, a combination, a zero row: any 4th pick is dependent on the first 3 in D=3.
    dictionary = torch.cat([base, base[:2], base[:1] + 2 * base[1:2], torch.zeros(1, 3)])  # (8, 3)
    targets = torch.randn(5, 3, generator=generator)
    result = batch_omp(targets, dictionary, 6)
    assert all(len(set(row)) == 6 for row in result.indices.tolist())
    assert torch.isfinite(result.coefficients).all()
    assert (result.residual_norm / targets.norm(dim=1)).max() < 1e-3


@pytest.mark.parametrize("normalize_atoms", [False, True])
def test_a_target_equal_to_a_duplicated_atom_gets_finite_codes_on_the_refreshed_path(normalize_atoms):
    """A donor that plants a near-duplicate anchor (1.02 x another) and a token equal to it: once the residual
    is ~0 the later steps pick nearly dependent atoms and the Cholesky updates overflowed to NaN codes, which
    OMP wrote as NaN rows (bench/bench_audit.py, duplicate). The codes must stay finite and exact."""
    generator = torch.Generator().manual_seed(0)
    dictionary = torch.randn(17000, 64, generator=generator) * torch.rand(17000, 1, generator=generator)
    dictionary[100:108] = (1.02 * dictionary[:8]).bfloat16().float()  # above the Gram cap: the refreshed path
    targets = dictionary[100:108].clone()
    result = solver_omp_batches(targets, dictionary, 60, normalize_atoms=normalize_atoms,
                                select_dtype=torch.bfloat16)
    assert torch.isfinite(result.coefficients).all()
    assert (result.residual_norm / targets.norm(dim=1)).max() < 1e-2
    assert all(len(set(row)) == 60 for row in result.indices.tolist())


def test_low_precision_inputs_are_solved_in_float32():
    targets, dictionary = problem(seed=8)
    result = batch_omp(targets.bfloat16(), dictionary.bfloat16(), 4)
    reference = batch_omp(targets.bfloat16().float(), dictionary.bfloat16().float(), 4)
    assert result.coefficients.dtype == result.residual_norm.dtype == torch.float32
    assert torch.equal(result.indices, reference.indices)


def test_empty_targets():
    _, dictionary = problem(seed=0)
    result = omp_batches(torch.zeros(0, 64), dictionary, 4, device="cpu")
    assert result.indices.shape == result.coefficients.shape == (0, 4) and result.residual_norm.shape == (0,)


@pytest.mark.parametrize("gram", [True, False])
def test_tiny_batches_equal_one_batch_and_report_progress(path, gram, monkeypatch):
    """Without a Gram (the refreshed path), later batches reuse the first one's buffers: the last, smaller
    batch reads views of them, and nothing of an earlier batch may leak into a later one's codes."""
    if not gram:
        monkeypatch.setattr(sparse_coding, "gram_fits", lambda n_atoms, device: False)
    options = {} if gram else {"refresh": 2, "refresh_pool": 16}
    targets, dictionary = problem(seed=9, batch=23)
    calls: list[tuple[int, int]] = []
    small = omp_batches(targets, dictionary, 7, device="cpu", batch_size=4,
                        progress=lambda done, total: calls.append((done, total)), **options)
    whole = omp_batches(targets, dictionary, 7, device="cpu", batch_size=23, **options)
    one_by_one = torch.cat([omp_batches(targets[i:i + 1], dictionary, 7, device="cpu", **options).indices
                            for i in range(23)])
    assert torch.equal(one_by_one, whole.indices)
    assert calls == [(4, 23), (8, 23), (12, 23), (16, 23), (20, 23), (23, 23)]
    assert torch.equal(small.indices, whole.indices)
    torch.testing.assert_close(small.coefficients, whole.coefficients, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(small.residual_norm, whole.residual_norm, rtol=1e-5, atol=1e-6)


def test_batch_size_from_free_memory_covers_all_targets(monkeypatch):
    targets, dictionary = problem(seed=10, batch=50)
    calls: list[int] = []
    # 300 atoms: a Gram of 360 KB fits in 1 MB, and a quarter of the rest holds only a few targets.
    monkeypatch.setattr(sparse_coding, "free_memory_bytes", lambda device: 1_000_000)
    result = omp_batches(targets, dictionary, 5, device="cpu", progress=lambda done, total: calls.append(done))
    assert 1 < len(calls) < 50 and calls[-1] == 50
    assert torch.equal(result.indices, omp_batches(targets, dictionary, 5, device="cpu", batch_size=50).indices)


def test_same_inputs_give_identical_outputs():
    targets, dictionary = problem(seed=12, batch=40)
    first = omp_batches(targets, dictionary, 12, device="cpu", batch_size=16)
    second = omp_batches(targets.clone(), dictionary.clone(), 12, device="cpu", batch_size=16)
    for a, b in zip((first.indices, first.coefficients, first.residual_norm),
                    (second.indices, second.coefficients, second.residual_norm)):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_are_solved_on_cuda_and_match_cpu():
    targets, dictionary = problem(seed=13)
    on_gpu = batch_omp(targets.cuda(), dictionary.cuda(), 8)
    assert on_gpu.indices.device.type == "cuda"
    on_cpu = batch_omp(targets, dictionary, 8)
    assert torch.equal(on_gpu.indices.cpu(), on_cpu.indices)
    torch.testing.assert_close(on_gpu.coefficients.cpu(), on_cpu.coefficients, rtol=1e-4, atol=1e-5)
    batched = omp_batches(targets, dictionary, 8, device="cuda")
    assert batched.indices.device.type == "cpu" and torch.equal(batched.indices, on_cpu.indices)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_refreshed_path_on_cuda_with_fast_ranking_matches_sklearn_where_its_pool_cannot_miss(monkeypatch):
    """The draft-scale path on a GPU (no Gram, full correlations in the device's fast dtype, reused workspace
    across batches): with a pool of every atom the ranking precision cannot change a pick."""
    monkeypatch.setattr(sparse_coding, "gram_fits", lambda n_atoms, device: False)
    targets, dictionary = problem(seed=22)
    result = solver_omp_batches(targets, dictionary, 9, device="cuda", normalize_atoms=True, refresh=4,
                                refresh_pool=300, batch_size=7,
                                select_dtype=fast_selection_dtype(torch.device("cuda")))
    assert result.indices.device.type == "cpu"
    assert_matches_sklearn(result, sklearn_codes(targets, dictionary, 9, normalize=True))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_atoms=st.integers(2, 40), dim=st.integers(1, 12),
       k=st.integers(1, 8), normalize=st.booleans())
def test_codes_are_greedy_prefixes_with_shrinking_residuals(seed, n_atoms, dim, k, normalize):
    k = min(k, n_atoms - 1)
    generator = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(n_atoms, dim, generator=generator)
    targets = torch.randn(3, dim, generator=generator)
    shorter = batch_omp(targets, dictionary, k, normalize_atoms=normalize)
    longer = batch_omp(targets, dictionary, k + 1, normalize_atoms=normalize)
    assert all(len(set(row)) == k + 1 for row in longer.indices.tolist())
    assert torch.isfinite(longer.coefficients).all()
    scale = targets.norm(dim=1) + 1e-6
    assert (longer.residual_norm <= scale * (1 + 1e-4)).all()
    if k < dim:  # below D the residual is well above float error, so each greedy pick is unambiguous
        well_posed = shorter.residual_norm > 1e-2 * scale
        assert torch.equal(longer.indices[well_posed, :k], shorter.indices[well_posed])
        assert (longer.residual_norm <= shorter.residual_norm + 1e-4 * scale).all()
