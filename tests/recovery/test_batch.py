"""Batch size from free memory: the arithmetic of fit_batch, the CPU default, a probe that leaves nothing behind,
and on CUDA a measured size that trains."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import CORPORA, SMOLLM2_TOKENIZER, build_tiny_model
from tokensurgeon.config import CPU_BATCH_SIZE, MAX_AUTO_BATCH
from tokensurgeon.evaluation import load_for_eval
from tokensurgeon.recovery.batch import HEADROOM, fit_batch, measure_batch
from tokensurgeon.recovery.data import samples, side
from tokensurgeon.recovery.options import RecoveryOptions
from tokensurgeon.recovery.train import Objective, _probe, recover
from tokensurgeon.recovery.trainable import prepare

TEXT = (CORPORA / "lee_news.txt").read_text(encoding="utf-8")[:6000]
GB = 2**30


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("batch") / "tiny", SMOLLM2_TOKENIZER, tied=True,
                            dtype=torch.float32)


def test_fit_batch_fills_the_headroom_of_free_memory():
    # 10 GB free: 7 GB usable at HEADROOM 0.7; 2 GB fixed leaves 5 GB, 1 GB a sequence
    assert HEADROOM == 0.7
    assert fit_batch(per_sequence=1 * GB, fixed=2 * GB, free=10 * GB) == 5
    assert fit_batch(per_sequence=1 * GB, fixed=2 * GB, free=10 * GB, cap=3) == 3
    assert fit_batch(per_sequence=1 * GB, fixed=9 * GB, free=10 * GB) == 1  # no room: one sequence, never zero
    assert fit_batch(per_sequence=0, fixed=0, free=10 * GB) == MAX_AUTO_BATCH


def test_cpu_takes_the_fixed_batch_without_probing():
    def step(n):
        raise AssertionError("no probe on CPU")

    assert measure_batch(step, 10**9, torch.device("cpu")) == CPU_BATCH_SIZE == 4


def test_probe_updates_nothing_and_leaves_no_gradient(tiny):
    model, tokenizer = load_for_eval(tiny, device=torch.device("cpu"))
    options = RecoveryOptions(objective="lm", train="embeddings", context=32, batch_size=None)
    model, trainable, _ = prepare(model, options, None)
    before = {name: p.detach().clone() for name, p in trainable.items()}
    batch = samples(TEXT, "news", side(tokenizer), None, 32)[:3]
    _probe(model, Objective(options, side(tokenizer), None, None), batch, torch.device("cpu"),
           torch.autocast("cpu", enabled=False))
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[name]) for name, p in trainable.items())


def test_recover_without_a_batch_size_trains_with_the_cpu_batch(tiny, tmp_path):
    options = RecoveryOptions(objective="lm", train="embeddings", steps=2, eval_every=1, context=32,
                              batch_size=None, eval_max_bytes=600, eval_context=64)
    _, result = recover(shutil.copytree(tiny, tmp_path / "p"), {"news": TEXT[:5000]}, {"news": TEXT[5000:]},
                        options, device="cpu")
    assert result.batch_size == CPU_BATCH_SIZE and result.steps_run == 2
    assert json.loads(json.dumps(result.to_dict()))["batch_size"] == CPU_BATCH_SIZE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_is_measured_from_free_memory_and_trains(tiny, tmp_path):
    options = RecoveryOptions(objective="lm", train="lora", steps=2, eval_every=1, context=64, batch_size=None,
                              eval_max_bytes=600, eval_context=64)
    _, result = recover(shutil.copytree(tiny, tmp_path / "p"), {"news": TEXT[:5000]}, {"news": TEXT[5000:]},
                        options, device="cuda")
    # a tiny model on a GPU of gigabytes: memory is not what limits it, the cap is
    assert result.device.startswith("cuda") and result.batch_size == MAX_AUTO_BATCH and result.steps_run == 2
