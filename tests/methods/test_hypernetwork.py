"""The hypernetwork method: warm-up generalises to held-out base tokens, save/load, determinism,
the base fingerprint check, the LM stage, and transplant with a trained and an on-the-fly network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import CORPORA, SMOLLM2_TOKENIZER, TOKENIZERS
from tokensurgeon.cli import app
from tokensurgeon.config import HypernetConfig
from tokensurgeon.errors import MethodError
from tokensurgeon.methods._shared.hypernet_store import load_hypernet, save_hypernet
from tokensurgeon.methods._shared.hypernetwork import predict, train_hypernet, warmup_data
from tokensurgeon.vocab import build_vocabulary, load_tokenizer

runner = CliRunner()
FAST = dict(steps=150, batch_size=64, width=32, heads=2)


@pytest.fixture(scope="module")
def vocab():
    return build_vocabulary(load_tokenizer(SMOLLM2_TOKENIZER))


@pytest.fixture(scope="module")
def compositional(vocab):
    """Rows that follow from a token's bytes, not as their mean: a net that reads pieces can learn them,
    and a held-out token's row is predictable from its pieces (random rows would not be)."""
    generator = torch.Generator().manual_seed(0)
    byte_vectors = torch.randn(256, 32, generator=generator)
    position = torch.linspace(1.0, 0.3, 64)
    rows = torch.randn(vocab.size, 32, generator=generator) * 0.1
    for token_id, raw in enumerate(vocab.canonical):
        if raw:
            weights = position[:len(raw[:64])]
            rows[token_id] = torch.tanh((byte_vectors[list(raw[:64])] * weights[:, None]).sum(0))
    return rows


def test_warmup_data_spells_each_token_with_other_tokens(vocab):
    data = warmup_data(vocab, vocab.size, holdout=0.1, seed=0)
    assert len(data.pieces) > 45_000 and not set(data.train) & set(data.heldout)
    assert abs(len(data.heldout) - 0.1 * len(data.pieces)) <= 1
    for token_id, pieces in list(data.pieces.items())[::997]:
        assert token_id not in pieces and len(pieces) >= 2
        assert b"".join(vocab.canonical[p] for p in pieces) == vocab.canonical[token_id]


def test_warmup_beats_subword_mean_on_heldout_tokens(vocab, compositional):
    trained = train_hypernet([compositional], vocab, HypernetConfig(**FAST))
    record = trained.record["training"]
    assert record["heldout_tokens"] > 2000
    assert record["heldout_error_untrained"] == pytest.approx(record["heldout_error_subword_mean"], rel=1e-4)
    assert record["heldout_error"] < 0.85 * record["heldout_error_subword_mean"]
    assert record["warmup_loss"][-1] < record["warmup_loss"][0]


def test_seeded_training_is_deterministic_and_seeds_differ(vocab, compositional):
    first, again = (train_hypernet([compositional], vocab, HypernetConfig(**FAST | {"steps": 20})) for _ in range(2))
    other = train_hypernet([compositional], vocab, HypernetConfig(**FAST | {"steps": 20, "seed": 1}))
    for name, tensor in first.net.state_dict().items():
        assert torch.equal(tensor, again.net.state_dict()[name]), name
    assert not torch.equal(first.net.head.weight, other.net.head.weight)


def test_save_load_round_trip_and_other_base_refused(tmp_path, vocab, compositional):
    head = compositional.flip(1)
    trained = train_hypernet([compositional, head], vocab, HypernetConfig(**FAST | {"steps": 10}))
    save_hypernet(trained, tmp_path)
    assert json.loads((tmp_path / "hypernet.json").read_text())["architecture"]["matrices"] == 2
    loaded = load_hypernet(tmp_path, [compositional, head])
    pieces = [(10, 20), (30, 40, 50)]
    assert torch.equal(predict(trained.net, [compositional, head], pieces), predict(loaded.net, [compositional, head], pieces))
    with pytest.raises(MethodError, match="another base model"):
        load_hypernet(tmp_path, [compositional + 1e-3, head])
    with pytest.raises(MethodError, match="not a hypernetwork directory"):
        load_hypernet(tmp_path / "missing", [compositional, head])


def test_lm_stage_trains_through_the_frozen_model(tiny_models, vocab):
    from tokensurgeon.checkpoint import open_checkpoint, read_embeddings

    path = tiny_models["untied"]
    matrices = [m.float() for m in read_embeddings(open_checkpoint(path))]
    before = [p.detach().clone() for p in load_frozen_params(path)]
    config = HypernetConfig(steps=5, lm_steps=6, batch_size=16, width=16, heads=2, seq_len=32, lm_batch=2)
    trained = train_hypernet(matrices, vocab, config, base_path=path, tokenizer=load_tokenizer(path),
                             corpus=[CORPORA / "lee_news.txt"])
    record = trained.record["training"]
    assert record["config"]["lm_steps"] == 6 and len(record["lm_loss"]) == 1
    assert all(torch.isfinite(torch.tensor(record["lm_loss"])))
    assert all(torch.equal(a, b) for a, b in zip(before, load_frozen_params(path)))  # the base is only read


def load_frozen_params(path: Path) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return [t for f in sorted(path.glob("*.safetensors")) for t in load_file(f).values()]


def test_cli_train_then_transplant_with_it(tmp_path, tiny_models):
    hn = tmp_path / "hn"
    result = runner.invoke(app, ["hypernet", "train", str(tiny_models["untied"]), "-o", str(hn), "--steps", "30",
                                 "--width", "16", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["path"] == str(hn) and record["base"]["tied"] is False
    out = tmp_path / "out"
    result = runner.invoke(app, ["transplant", str(tiny_models["untied"]), str(TOKENIZERS / "mistral-v1"), "-o", str(out),
                                 "--method", "hypernet", "--hypernet", str(hn), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"]["info"]["hypernet"] == str(hn)
    lines = (out / "provenance.jsonl").read_text().split("\n")  # not splitlines: tokens may hold U+2028
    paths = {json.loads(line)["path"] for line in lines if line}
    assert "hypernet" in paths
    # the same network on another base (the tied model) is one line and exit code 2, nothing written
    result = runner.invoke(app, ["transplant", str(tiny_models["tied"]), str(TOKENIZERS / "mistral-v1"),
                                 "-o", str(tmp_path / "other"), "--method", "hypernet", "--hypernet", str(hn)])
    assert result.exit_code == 2 and "another base model" in result.output
    assert not (tmp_path / "other").exists()


def test_transplant_trains_on_the_fly_and_caches(tmp_path, tiny_models, monkeypatch):
    monkeypatch.setenv("TOKENSURGEON_CACHE", str(tmp_path / "cache"))
    args = ["transplant", str(tiny_models["tied"]), str(TOKENIZERS / "mistral-v1"), "--method", "hypernet",
            "--option", "steps=10", "--option", "width=16", "--json"]
    first = runner.invoke(app, args + ["-o", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    cached = Path(json.loads(first.stdout)["method"]["info"]["hypernet"])
    assert cached.parent == tmp_path / "cache" / "hypernet" and (cached / "hypernet.safetensors").is_file()
    stamp = (cached / "hypernet.json").stat().st_mtime_ns
    second = runner.invoke(app, args + ["-o", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    assert (cached / "hypernet.json").stat().st_mtime_ns == stamp  # reused, not retrained
    assert json.loads(first.stdout)["output"]["embed_sha256"] == json.loads(second.stdout)["output"]["embed_sha256"]


def test_unknown_option_is_refused():
    from tokensurgeon.methods import get_init_method

    with pytest.raises(MethodError, match="unknown options"):
        get_init_method("hypernet", stepz=3)
    with pytest.raises(MethodError, match="do not apply"):
        get_init_method("hypernet", hypernet="x", steps=3)


def test_train_help_has_an_example():
    result = runner.invoke(app, ["hypernet", "train", "--help"])
    assert result.exit_code == 0 and "Example" in result.output
