"""focus, tokenadapt and wechsel on real tokenizers: a small real text trains the auxiliary space."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from conftest import CORPORA, SMOLLM2_TOKENIZER, TOKENIZERS
from tokensurgeon.methods._shared.similarity import FastTextParams, corpus_space, most_similar
from tokensurgeon.errors import MethodError
from tokensurgeon.methods import InitContext, get_init_method
from tokensurgeon.methods._shared.pieces import is_partial_utf8
from tokensurgeon.methods._shared.pieces import piece_means
from tokensurgeon.vocab.pair import load_pair

SMALL = {"buckets": 20_000, "epochs": 3, "dim": 16}  # quick to train; the defaults are for real corpora


@pytest.fixture(scope="module")
def pair():
    return load_pair(SMOLLM2_TOKENIZER, TOKENIZERS / "llama2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "spa_en.txt"
    path.write_text((CORPORA / "udhr" / "spa.txt").read_text(encoding="utf-8")
                    + (CORPORA / "lee_news.txt").read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return (path,)


@pytest.fixture()
def make_ctx(pair, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSURGEON_CACHE", str(tmp_path / "cache"))
    generator = torch.Generator().manual_seed(0)
    base_embed = torch.randn(pair.base_vocab.size, 8, generator=generator)
    base_head = torch.randn(pair.base_vocab.size, 8, generator=generator)

    def make(*, untied: bool = False, with_corpus: bool = True, donor_embed: torch.Tensor | None = None):
        return InitContext(pair.alignment, pair.base_vocab, pair.donor_vocab, base_embed,
                           base_head if untied else None, donor_embed, None, torch.device("cpu"), seed=0,
                           tokenizers=pair, corpus=corpus if with_corpus else ())
    return make


def check_rows(ctx, result, matrix, paths):
    """Every row is what its provenance says: a weighted mix, or the subword mean of its pieces."""
    fallback = ctx.base_mean(matrix)
    for position, prov in enumerate(result.provenance):
        if prov.path in paths:
            expected = sum(w * matrix[s] for s, w in zip(prov.sources, prov.weights))
        else:
            pieces = ctx.alignment.decompositions[ctx.new_ids[position]]
            expected = piece_means(matrix, [pieces], fallback)[0]
            assert prov.path == ("subword-mean" if pieces else "fallback-mean")
        assert torch.allclose(result.embed[position] if matrix is ctx.base_embed else result.head[position],
                              expected, atol=1e-5)


def test_focus_mixes_shared_rows_sparsely_and_falls_back_to_the_subword_mean(make_ctx):
    ctx = make_ctx(untied=True)
    result = get_init_method("focus", **SMALL).initialise(ctx)
    paths = Counter(prov.path for prov in result.provenance)
    assert paths["focus"] > 200 and paths["focus-ngrams"] > 5000 and paths["subword-mean"] > 0
    shared = {ctx.alignment.source[i] for i, kind in enumerate(ctx.alignment.match) if kind in ("exact", "bytes")}
    for prov in result.provenance:
        if prov.path.startswith("focus"):
            assert set(prov.sources) <= shared and all(w > 0 for w in prov.weights)
            assert abs(sum(prov.weights) - 1) < 1e-4 and len(prov.sources) <= 256
    for position, token_id in enumerate(ctx.new_ids):  # byte pieces are never mixed
        if is_partial_utf8(ctx.donor_vocab.canonical[token_id]):
            assert not result.provenance[position].path.startswith("focus")
    check_rows(ctx, result, ctx.base_embed, {"focus", "focus-ngrams"})
    check_rows(ctx, result, ctx.base_head, {"focus", "focus-ngrams"})
    assert result.info["auxiliary"] == "fasttext"


def test_focus_temperature_makes_mixes_sparser(make_ctx):
    ctx = make_ctx()
    methods = {t: get_init_method("focus", **SMALL, temperature=t, top_k=256) for t in (1.0, 0.05)}
    runs = {t: method.initialise(ctx).provenance for t, method in methods.items()}
    pairs = [(sharp, soft) for sharp, soft in zip(runs[0.05], runs[1.0])
             if sharp.path.startswith("focus") and soft.path.startswith("focus")]
    assert pairs
    # sparsemax(z / t) keeps the entries above a threshold: dividing by a smaller t can only shrink that set,
    # token by token, and a 20x sharper mix must drop some support somewhere
    assert all(set(sharp.sources) <= set(soft.sources) for sharp, soft in pairs)
    assert sum(len(sharp.sources) for sharp, _ in pairs) < sum(len(soft.sources) for _, soft in pairs)


def test_focus_without_enough_ngrams_falls_back_not_to_random_rows(make_ctx):
    ctx = make_ctx()
    strict = get_init_method("focus", **SMALL, min_ngram_share=1.0).initialise(ctx)
    paths = Counter(prov.path for prov in strict.provenance)
    loose = Counter(prov.path for prov in get_init_method("focus", **SMALL).initialise(ctx).provenance)
    assert paths["subword-mean"] > loose["subword-mean"]
    check_rows(ctx, strict, ctx.base_embed, {"focus", "focus-ngrams"})


def test_tokenadapt_blends_local_pieces_with_global_neighbours(make_ctx):
    ctx = make_ctx(untied=True)
    result = get_init_method("tokenadapt", **SMALL).initialise(ctx)
    blended = [(p, prov) for p, prov in enumerate(result.provenance) if prov.path == "tokenadapt"]
    assert len(blended) > 5000
    for position, prov in blended[:2000]:
        pieces = ctx.alignment.decompositions[ctx.new_ids[position]]
        assert tuple(prov.sources[:len(pieces)]) == pieces and len(prov.sources) == len(pieces) + 3
        assert abs(sum(prov.weights[:len(pieces)]) - 0.7) < 1e-5 and abs(sum(prov.weights[len(pieces):]) - 0.3) < 1e-5
    check_rows(ctx, result, ctx.base_embed, {"tokenadapt"})
    check_rows(ctx, result, ctx.base_head, {"tokenadapt"})


def test_donor_model_is_the_auxiliary_space_when_given(make_ctx, pair):
    donor_embed = torch.randn(pair.donor_vocab.size, 12, generator=torch.Generator().manual_seed(1))
    ctx = make_ctx(with_corpus=False, donor_embed=donor_embed)
    for name in ("focus", "tokenadapt"):
        result = get_init_method(name).initialise(ctx)
        assert result.info["auxiliary"] == "donor-model"
        assert not any(prov.path.endswith("ngrams") for prov in result.provenance)
        check_rows(ctx, result, ctx.base_embed, {"focus", "tokenadapt"})


@pytest.mark.parametrize("name", ["focus", "tokenadapt"])
def test_no_corpus_and_no_donor_model_is_a_method_error(make_ctx, name):
    with pytest.raises(MethodError, match="needs --corpus FILE"):
        get_init_method(name).initialise(make_ctx(with_corpus=False))
    with pytest.raises(MethodError, match="auxiliary-space options"):
        get_init_method(name, dimension=3)
    for bad in ({"negative": 0}, {"alpha": 0.0}, {"sample": 1.0}, {"dim": 0}, {"min_ngram_share": 1.5}):
        with pytest.raises(MethodError, match="must be at least 1"):
            get_init_method(name, **bad)


def test_corpus_vectors_are_cached_and_deterministic(pair, corpus, tmp_path):
    params = FastTextParams(**SMALL)
    raws = [pair.donor_vocab.canonical[i] for i in pair.alignment.new_ids[:3000]]
    first = corpus_space(corpus, pair.donor_tokenizer, pair.donor_vocab, params=params, cache_dir=tmp_path / "a")
    again = corpus_space(corpus, pair.donor_tokenizer, pair.donor_vocab, params=params, cache_dir=tmp_path / "a")
    fresh = corpus_space(corpus, pair.donor_tokenizer, pair.donor_vocab, params=params, cache_dir=tmp_path / "b")
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first.info["cache"].split("/")[-1]]
    vectors, found, _ = first.vectors_for(raws)
    for other in (again, fresh):
        other_vectors, other_found, _ = other.vectors_for(raws)
        assert torch.equal(found, other_found) and torch.equal(vectors, other_vectors)
    other_seed = corpus_space(corpus, pair.donor_tokenizer, pair.donor_vocab, params=params, seed=1,
                              cache_dir=tmp_path / "a")
    assert other_seed.info["cache"] != first.info["cache"]


def test_wechsel_mixes_nearest_base_words_and_falls_back(make_ctx, pair, tmp_path):
    ctx = make_ctx(with_corpus=False)
    # an aligned space by construction: a donor word and its base "translation" share a vector
    words = {"hola": [1.0, 0.0, 0.0], "hello": [1.0, 0.05, 0.0], "mundo": [0.0, 1.0, 0.0], "world": [0.0, 1.0, 0.1],
             "the": [0.0, 0.0, 1.0]}
    vectors = tmp_path / "aligned.vec"
    vectors.write_text("5 3\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in words.items()))
    result = get_init_method("wechsel", vectors=str(vectors), top_k=2).initialise(ctx)
    by_token = {ctx.donor_vocab.tokens[i]: prov for i, prov in zip(ctx.new_ids, result.provenance)}
    mundo = by_token["▁mundo"]
    assert mundo.path == "wechsel" and abs(sum(mundo.weights) - 1) < 1e-6
    assert {ctx.base_vocab.tokens[s].lstrip("Ġ").lower() for s in mundo.sources} == {"world"}
    assert sum(prov.path == "wechsel" for prov in result.provenance) < 10
    check_rows(ctx, result, ctx.base_embed, {"wechsel"})
    with pytest.raises(MethodError, match="needs aligned word vectors"):
        get_init_method("wechsel")


def _rotated_spaces(tmp_path, dim: int = 4):
    """Base-language words with random vectors, their donor-language translations in a space turned by a known
    random rotation, and a dictionary of every pair but mundo-world (which only the rotation can align)."""
    generator = torch.Generator().manual_seed(0)
    translations = {"hola": "hello", "mundo": "world", "el": "the", "casa": "house", "gato": "cat"}
    source = {word: torch.randn(dim, generator=generator) for word in translations.values()}
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
    target = {word: source[english] @ rotation.T for word, english in translations.items()}
    files = {}
    for name, space in (("source", source), ("target", target)):
        files[name] = tmp_path / f"{name}.vec"
        files[name].write_text("".join(f"{w} {' '.join(f'{x:.8f}' for x in v.tolist())}\n" for w, v in space.items()))
    files["dictionary"] = tmp_path / "dictionary.txt"
    files["dictionary"].write_text("".join(f"{t} {s}\n" for t, s in translations.items() if t != "mundo"))
    return source, target, translations, files


def test_wechsel_procrustes_undoes_a_known_rotation(tmp_path):
    from tokensurgeon.methods.wechsel import procrustes

    source, target, translations, files = _rotated_spaces(tmp_path)
    aligned = procrustes(target, source, files["dictionary"])
    for word, english in translations.items():  # mundo included: it is not in the dictionary
        assert torch.allclose(aligned[word], source[english], atol=1e-5), word


def test_wechsel_through_source_and_target_vectors_and_a_dictionary(make_ctx, tmp_path):
    ctx = make_ctx(with_corpus=False)
    _, _, _, files = _rotated_spaces(tmp_path)
    result = get_init_method("wechsel", source_vectors=str(files["source"]), target_vectors=str(files["target"]),
                             dictionary=str(files["dictionary"]), top_k=2).initialise(ctx)
    mundo = {ctx.donor_vocab.tokens[i]: prov for i, prov in zip(ctx.new_ids, result.provenance)}["▁mundo"]
    assert mundo.path == "wechsel"
    nearest_source = mundo.sources[max(range(len(mundo.weights)), key=mundo.weights.__getitem__)]
    assert ctx.base_vocab.tokens[nearest_source].lstrip("Ġ").lower() == "world"
    unaligned = get_init_method("wechsel", source_vectors=str(files["source"]), target_vectors=str(files["target"]),
                                top_k=2).initialise(ctx)  # no dictionary: the spaces stay apart
    assert unaligned.provenance != result.provenance


def test_most_similar_finds_float32_top_k_from_a_bf16_ranking():
    generator = torch.Generator().manual_seed(3)
    unit = lambda m: m / m.norm(dim=1, keepdim=True)  # noqa: E731
    targets = unit(torch.randn(300, 32, generator=generator))
    candidates = unit(torch.randn(4000, 32, generator=generator))
    found = list(most_similar(targets, candidates, 5, "cpu", block=128))
    assert [len(values) for _, values in found] == [128, 128, 44]
    indices, values = torch.cat([i for i, _ in found]), torch.cat([v for _, v in found])
    expected_values, expected = (targets @ candidates.T).topk(5, dim=1)
    assert torch.equal(indices, expected) and torch.allclose(values, expected_values, atol=1e-6)
