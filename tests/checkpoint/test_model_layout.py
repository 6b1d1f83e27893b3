from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import tokensurgeon.checkpoint.model_layout as model_layout
from tokensurgeon.checkpoint import open_checkpoint


@pytest.fixture
def counted_builds(monkeypatch, tmp_path) -> list[Path]:
    """A private cache, and the list of checkpoints whose model class was built (not read from the cache)."""
    monkeypatch.setenv("TOKENSURGEON_CACHE", str(tmp_path / "cache"))
    builds: list[Path] = []
    real = model_layout._build_layout

    def build(path, keys, trust_remote_code):
        builds.append(path)
        return real(path, keys, trust_remote_code)
    monkeypatch.setattr(model_layout, "_build_layout", build)
    return builds


def opened(path: Path) -> tuple:
    ckpt = open_checkpoint(path)
    return ckpt.input_name, ckpt.output_name, ckpt.tied, ckpt.vocab_rows, ckpt.hidden_size, ckpt.vocab_extras


def test_a_second_open_reads_the_layout_from_the_cache(tiny_models, counted_builds):
    for name in ("tied", "untied"):
        first = opened(tiny_models[name])
        assert opened(tiny_models[name]) == first
    assert counted_builds == [tiny_models["tied"], tiny_models["untied"]]


def test_a_changed_config_or_a_corrupt_entry_is_built_again(tiny_models, counted_builds, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_models["tied"], model)
    expected = opened(model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"tie_word_embeddings": True, "comment": 1}))
    assert opened(model) == expected
    assert len(counted_builds) == 2
    for entry in (tmp_path / "cache" / "layouts").glob("*/layout.json"):
        entry.write_text("{not json")
    assert opened(model) == expected
    assert len(counted_builds) == 3


def test_remote_code_models_are_never_cached(tiny_models, counted_builds, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_models["tied"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"auto_map": {"AutoConfig": "x.Config"}}))
    opened(model)
    opened(model)
    assert len(counted_builds) == 2
    assert not (tmp_path / "cache" / "layouts").exists()


def test_a_cached_layout_opens_without_importing_transformers(tiny_models, counted_builds):
    """The model kind check and the cache key need transformers only where the layout is built."""
    import os
    import subprocess
    import sys

    opened(tiny_models["tied"])
    script = ("import sys; from tokensurgeon.checkpoint import open_checkpoint; "
              f"open_checkpoint({str(tiny_models['tied'])!r}); print('transformers' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy())
    assert run.stdout.strip() == "False", run.stderr
    assert counted_builds == [tiny_models["tied"]]


def test_the_model_kind_is_checked_before_a_layout_is_built(tiny_models, counted_builds, tmp_path):
    from tokensurgeon.errors import CheckpointError

    model = tmp_path / "model"
    shutil.copytree(tiny_models["tied"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"is_encoder_decoder": True}))
    with pytest.raises(CheckpointError, match="an encoder-decoder model .* is not supported"):
        opened(model)
    assert counted_builds == [] and not (tmp_path / "cache" / "layouts").exists()


def test_transformers_version_without_the_import_is_the_module_s():
    import subprocess
    import sys

    import transformers

    script = ("import sys; from tokensurgeon.runtime.cache import transformers_version; "
              "print(transformers_version(), 'transformers' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.stdout.split() == [transformers.__version__, "False"], run.stderr
