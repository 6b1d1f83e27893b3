"""The ranking precision: bf16 only where it is measured faster, and the same choice on every run of a machine."""

import json

import pytest
import torch

from tokensurgeon.runtime import matmul


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A CPU that claims native bf16, a fresh cache folder and no choice remembered in the process."""
    monkeypatch.setenv("TOKENSURGEON_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    matmul._cpu_choice.cache_clear()
    yield tmp_path
    matmul._cpu_choice.cache_clear()


def timings(monkeypatch, float32: float, bfloat16: float) -> list[torch.dtype]:
    """Make the probe report these seconds; returns the list of dtypes it was asked to time."""
    asked = []

    def seconds(dtype):
        asked.append(dtype)
        return {torch.float32: float32, torch.bfloat16: bfloat16}[dtype]

    monkeypatch.setattr(matmul, "_product_seconds", seconds)
    return asked


def test_no_native_bf16_means_float32_without_timing(monkeypatch, machine):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    asked = timings(monkeypatch, 1.0, 0.1)
    assert matmul.fast_selection_dtype(torch.device("cpu")) == torch.float32
    assert asked == []


@pytest.mark.parametrize("float32, bfloat16, expected", [(1.0, 0.2, torch.bfloat16), (1.0, 0.9, torch.float32),
                                                         (1.0, 2.0, torch.float32)])
def test_bf16_only_when_clearly_faster(monkeypatch, machine, float32, bfloat16, expected):
    timings(monkeypatch, float32, bfloat16)
    assert matmul.fast_selection_dtype(torch.device("cpu")) == expected


def test_the_choice_is_recorded_and_reused_by_later_runs(monkeypatch, machine):
    timings(monkeypatch, 1.0, 0.2)
    assert matmul.fast_selection_dtype(torch.device("cpu")) == torch.bfloat16
    [record] = machine.glob("probes/*/ranking.json")
    assert json.loads(record.read_text())["dtype"] == "bfloat16"
    matmul._cpu_choice.cache_clear()  # a new process: the record decides, even if a new timing would not agree
    asked = timings(monkeypatch, 0.2, 1.0)
    assert matmul.fast_selection_dtype(torch.device("cpu")) == torch.bfloat16
    assert asked == []


def test_an_unreadable_record_is_timed_again(monkeypatch, machine):
    timings(monkeypatch, 1.0, 0.2)
    matmul.fast_selection_dtype(torch.device("cpu"))
    [record] = machine.glob("probes/*/ranking.json")
    record.write_text("not json")
    matmul._cpu_choice.cache_clear()
    asked = timings(monkeypatch, 0.2, 1.0)
    assert matmul.fast_selection_dtype(torch.device("cpu")) == torch.float32
    assert asked == [torch.float32, torch.bfloat16]

