"""Issue 9: bad input gets a clear error, outputs are atomic, inputs are never touched.

Every user mistake ends in exit code 2 and one line on stderr (a traceback only with --debug);
a killed or failed run leaves no output (or the previous one untouched); BASE and DONOR are never
written; no code from a checkpoint runs unless asked. The hypothesis tests at the end fuzz the
alignment and the readers of safetensors headers and tokenizer.json files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import CORPORA, ROOT, TOKENIZERS, build_tiny_model
from tokensurgeon.vocab.alignment import COMPUTED, COPIED, align_vocabularies
from tokensurgeon.cli import app
from tokensurgeon.runtime.outdir import clean_leftovers
from tokensurgeon.vocab import Vocabulary, canonical_bytes, gpt2_byte_decoder

runner = CliRunner()
TEXT = CORPORA / "lee_news.txt"


# ---------------------------------------------------------------------------------------------
# helpers and fixtures


def tree_digest(*roots: Path) -> dict[str, tuple[int, str]]:
    """Every file and directory under the roots: path -> (mode, sha256 of the content)."""
    digest = {}
    for root in roots:
        root = Path(root)
        for path in sorted([root, *root.rglob("*")]):
            key = str(path)
            if path.is_file():
                digest[key] = (path.stat().st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                digest[key] = (path.stat().st_mode, "dir")
    return digest


@contextlib.contextmanager
def untouched(*roots: Path):
    """Assert that nothing under the roots was created, removed, changed or re-permissioned."""
    before = tree_digest(*roots)
    yield
    assert tree_digest(*roots) == before


def leftovers(out: Path) -> list[str]:
    """Hidden staging directories beside OUT."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, fragment: str) -> str:
    """Exit code 2, the fragment in a single stderr line, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """A 320-token byte-level BPE tokenizer and tiny models (tied and untied) built on it: fast to transplant."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("small")
    for name, size, text in (("tokenizer", 320, TEXT), ("donor", 400, CORPORA / "enwiki_head.txt")):
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["<s>", "</s>"], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator([text.read_text()[:20_000]], trainer)
        PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>").save_pretrained(
            root / name)
    return {
        "tokenizer": root / "tokenizer",
        "donor": root / "donor",  # 400 tokens, partly shared with "tokenizer"
        "tied": build_tiny_model(root / "tied", root / "tokenizer", tied=True),
        "untied": build_tiny_model(root / "untied", root / "tokenizer", tied=False, seed=2),
        "sharded": build_tiny_model(root / "sharded", root / "tokenizer", tied=False, seed=3, shard_size="40KB"),
        "donor_model": build_tiny_model(root / "donor_model", root / "donor", tied=False, seed=4),
    }


def mutate_weights(model: Path, change) -> None:
    """Rewrite model.safetensors with change(tensors) applied (a dict of name -> tensor)."""
    file = model / "model.safetensors"
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------------------------------------
# 1. atomic outputs: a run killed while writing leaves nothing (or the previous output untouched)


# A CLI run in a subprocess that stops right after it staged the weights and waits to be signalled: the
# signal lands mid-run on every machine (no race against a fast run).
PAUSED_RUN = """
import pathlib, sys, time
import tokensurgeon.pipeline.transplant as job
from tokensurgeon.cli import app

original = job.write_weights

def write_then_wait(*args, **kwargs):
    original(*args, **kwargs)
    pathlib.Path(sys.argv[1]).write_text("staged")
    time.sleep(600)

job.write_weights = write_then_wait
app(sys.argv[2:], prog_name="tokensurgeon")
"""


@contextlib.contextmanager
def paused_run(args: list, marker: Path) -> Iterator[subprocess.Popen]:
    """Yield the running CLI process once its weights are staged; killed if the block leaves it alive."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-c", PAUSED_RUN, str(marker), *map(str, args)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run never staged its weights"
            time.sleep(0.01)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()


def staged_files(out: Path) -> list[str]:
    staging = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial-")]
    return sorted(os.listdir(staging[0])) if staging else []


def test_kill_during_write_leaves_no_output_and_next_run_cleans_up(small, tmp_path):
    out = tmp_path / "out"
    with paused_run(["transplant", small["tied"], small["donor"], "-o", out], tmp_path / "staged") as process:
        assert "model.safetensors" in staged_files(out)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()
    # a kill cannot clean up: the staging directory and the (empty) lock file stay until the next run
    assert [name.split("-")[0] for name in leftovers(out)] == [".out.lock", ".out.partial"]
    result = invoke("transplant", small["tied"], small["donor"], "-o", out, "--json")
    assert result.exit_code == 0, result.output
    assert leftovers(out) == [] and (out / "report.json").is_file()


def test_kill_during_force_replace_keeps_the_previous_output(small, tmp_path):
    out = tmp_path / "out"
    assert invoke("transplant", small["tied"], small["donor"], "-o", out, "--json").exit_code == 0
    with untouched(out):
        args = ["transplant", small["untied"], small["tokenizer"], "-o", out, "--force"]
        with paused_run(args, tmp_path / "staged") as process:
            assert "model.safetensors" in staged_files(out)
            process.send_signal(signal.SIGKILL)
            process.wait()
    refused = invoke("transplant", small["tied"], small["donor"], "-o", out)
    assert_user_error(refused, "not empty")
    assert leftovers(out) == []  # even a refused run clears a dead run's staging directory


def test_sigterm_during_a_transplant_leaves_no_output_and_no_lock(small, tmp_path):
    """Issue 17.9: SIGTERM left a model-sized .OUT.partial-* (and the lock) until a later run."""
    out = tmp_path / "out"
    with paused_run(["transplant", small["tied"], small["donor"], "-o", out], tmp_path / "staged") as process:
        assert [name.split("-")[0] for name in leftovers(out)] == [".out.lock", ".out.partial"]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert not out.exists() and leftovers(out) == []
    assert process.returncode == 128 + signal.SIGTERM  # the handler ran (a plain kill reads -15)


def test_a_second_run_while_the_lock_is_held_is_refused(small, tmp_path):
    """Issue 17.9: two runs to one OUT both succeeded, the later silently replacing the earlier."""
    out = tmp_path / "out"
    with paused_run(["transplant", small["tied"], small["donor"], "-o", out], tmp_path / "staged"):
        for extra in ([], ["--force"]):
            result = invoke("transplant", small["untied"], small["donor"], "-o", out, *extra)
            assert_user_error(result, "another tokensurgeon run is writing it now")
            assert not out.exists()
            assert [name.split("-")[0] for name in leftovers(out)] == [".out.lock", ".out.partial"]


def test_force_onto_a_read_only_output_is_one_line_and_keeps_it(small, tmp_path, monkeypatch):
    """Issue 17.9: --force over a read-only old OUT exited 0 and left the old output in a hidden folder."""
    out = tmp_path / "out"
    assert invoke("transplant", small["tied"], small["donor"], "-o", out).exit_code == 0
    locked = out / "sub"
    locked.mkdir()
    (locked / "notes.txt").write_text("keep me")
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write in a 0555 folder: simulate the denial everyone else gets
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: (Path(path) != locked or not mode & os.W_OK)
                            and real_access(path, mode, **kw))
    try:
        with untouched(out):
            result = invoke("transplant", small["untied"], small["donor"], "-o", out, "--force")
        assert_user_error(result, f"--force cannot remove the old output, {locked} is read-only")
        assert leftovers(out) == []
    finally:
        if locked.exists():
            locked.chmod(0o755)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_clean_leftovers_touches_only_dead_runs_of_the_same_output(tmp_path):
    out, dead, alive = tmp_path / "out", _dead_pid(), os.getppid()
    names = {f".out.partial-{dead}-abc123": True, f".out.partial-{alive}-abc123": False,
             f".out.old-{alive}-x1": False, ".out.partial-abc123": False, f".other.partial-{dead}-a": False,
             f"out.partial-{dead}-a": False, f".out.partialx-{dead}-a": False, f".outx.partial-{dead}-a": False}
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights").write_text("x")
    (tmp_path / f".out.partial-{dead}-file").write_text("a file, not a directory")
    removed = clean_leftovers(out)
    assert sorted(p.name for p in removed) == [n for n, gone in names.items() if gone]
    for name, gone in names.items():
        assert (tmp_path / name).exists() != gone
    assert (tmp_path / f".out.partial-{dead}-file").is_file()


def test_clean_leftovers_restores_an_output_retired_by_a_killed_replace(tmp_path):
    out, dead = tmp_path / "out", _dead_pid()
    retired = tmp_path / f".out.old-{dead}-q9" / "out"
    retired.mkdir(parents=True)
    (retired / "report.json").write_text("{}")
    clean_leftovers(out)
    assert (out / "report.json").read_text() == "{}" and leftovers(out) == []


def test_out_of_disk_space_cleans_up_and_says_so(small, tmp_path, monkeypatch):
    import tokensurgeon.pipeline.transplant as transplant_module

    original = transplant_module.write_weights

    def full_disk(checkpoint, staging, *args, **kwargs):
        original(checkpoint, staging, *args, **kwargs)  # some bytes land, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device", str(staging / "config.json"))

    monkeypatch.setattr(transplant_module, "write_weights", full_disk)
    out = tmp_path / "out"
    result = invoke("transplant", small["tied"], small["donor"], "-o", out)
    assert_user_error(result, "out of disk space while writing")
    assert "nothing was left behind" in result.stderr
    assert not out.exists() and leftovers(out) == []


# ---------------------------------------------------------------------------------------------
# 2. inputs are read-only


def test_transplant_inspect_evaluate_never_touch_their_inputs(small, tmp_path):
    base, donor = small["sharded"], small["donor_model"]
    with untouched(base, donor, TEXT):
        result = invoke("transplant", base, donor, "-o", tmp_path / "out", "--eval-text", TEXT,
                        "--eval-max-bytes", 3000, "--json")
        assert result.exit_code == 0, result.output
        assert invoke("inspect", base, donor, "--text", TEXT, "--json").exit_code == 0
        result = invoke("evaluate", base, donor, "--text", TEXT, "--max-bytes", 3000, "--json")
        assert result.exit_code == 0, result.output
        refused = invoke("transplant", base, donor, "-o", base / "inside")
        assert_user_error(refused, "inside input")


@pytest.mark.parametrize("command", ["transplant", "export", "heal", "compare"])
@pytest.mark.parametrize("out_kind", ["parent", "same", "symlink_to_parent"])
def test_an_output_that_holds_an_input_is_refused_and_deletes_nothing(small, tmp_path, monkeypatch,
                                                                         command, out_kind):
    """Issue 17.1: `-o PARENT --force` used to replace PARENT, deleting BASE and DONOR inside it."""
    work = tmp_path / "w"
    work.mkdir()
    base = Path(shutil.copytree(small["tied"], work / "base"))
    donor = Path(shutil.copytree(small["donor_model"], work / "donor"))
    text = Path(shutil.copy(TEXT, work / "text.txt"))
    out = {"parent": work, "same": base, "symlink_to_parent": tmp_path / "link"}[out_kind]
    if out_kind == "symlink_to_parent":
        out.symlink_to(work, target_is_directory=True)
    args = {"transplant": ["transplant", base, donor],
            "export": ["export", base],
            "heal": ["heal", base, "--text", text, "--rows", "all", "--steps", 1],
            "compare": ["compare", base, donor, "--text", text]}[command]
    monkeypatch.chdir(work)
    with untouched(work):
        result = invoke(*args, "-o", out, "--force")
        line = assert_user_error(result, "choose another -o")
    assert ("contains input" in line) if out_kind != "same" else ("is the input" in line), line


def test_an_eval_text_inside_the_output_is_refused(small, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    text = Path(shutil.copy(TEXT, out / "held.txt"))
    with untouched(out):
        result = invoke("transplant", small["tied"], small["donor"], "-o", out, "--force", "--eval-text", text)
        assert_user_error(result, f"contains input {text}")


def test_a_symlink_loop_as_output_is_one_line(small, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert_user_error(invoke("transplant", small["tied"], small["donor"], "-o", loop / "x"), "cannot resolve")


def test_identity_transplant_into_a_sibling_leaves_base_alone(small, tmp_path):
    with untouched(small["tied"]):
        assert invoke("transplant", small["tied"], small["tied"], "-o", tmp_path / "o", "--json").exit_code == 0


# ---------------------------------------------------------------------------------------------
# 3. no code execution by default: pickle weights and remote code


def _as_pickle(model: Path, shards: int = 1) -> None:
    """Replace a model's safetensors with pytorch_model*.bin files (and an index when sharded)."""
    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    if shards == 1:
        torch.save(state, model / "pytorch_model.bin")
        return
    names, weight_map = sorted(state), {}
    for k in range(shards):
        file = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = {name: state[name] for name in names[k::shards]}
        torch.save(part, model / file)
        weight_map |= {name: file for name in part}
    (model / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_pickle_weights_are_refused_without_allow_pickle(small, fresh_copy, tmp_path):
    model = fresh_copy(small["tied"], "pickled")
    _as_pickle(model)
    message = assert_user_error(invoke("transplant", model, small["donor"], "-o", tmp_path / "o"),
                                "only pickle weights")
    assert "--allow-pickle" in message and "save_pretrained" in message
    assert_user_error(invoke("evaluate", model, "--text", TEXT), "--allow-pickle")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("shards", [1, 2])
def test_allow_pickle_reads_weights_only_and_writes_safetensors(small, fresh_copy, tmp_path, shards):
    reference = tmp_path / "reference"
    assert invoke("transplant", small["untied"], small["donor"], "-o", reference, "--json").exit_code == 0
    model = fresh_copy(small["untied"], "pickled")
    _as_pickle(model, shards)
    out = tmp_path / "out"
    with untouched(model):
        result = invoke("transplant", model, small["donor"], "-o", out, "--allow-pickle", "--json")
    assert result.exit_code == 0, result.output
    assert not list(out.glob("*.bin"))
    written = {}
    for file in out.glob("*.safetensors"):
        written |= load_file(file)
    expected = load_file(reference / "model.safetensors")
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[name], expected[name]) for name in expected)
    assert (out / "model.safetensors.index.json").is_file() == (shards > 1)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # loads with plain transformers


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED",))


def test_allow_pickle_never_runs_code_from_a_malicious_pickle(small, fresh_copy, tmp_path, monkeypatch):
    model = fresh_copy(small["tied"], "evil")
    (model / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": _Exploit()}, model / "pytorch_model.bin")
    monkeypatch.chdir(tmp_path)
    result = invoke("transplant", model, small["donor"], "-o", tmp_path / "o", "--allow-pickle")
    assert_user_error(result, "cannot read as a weights-only pickle")
    assert not (tmp_path / "EXPLOITED").exists() and not (tmp_path / "o").exists()


def _custom_code_model(small, fresh_copy, marker: Path) -> Path:
    """A checkpoint whose architecture is defined by code shipped beside config.json (auto_map)."""
    model = fresh_copy(small["tied"], "custom")
    (model / "configuration_tiny.py").write_text(
        "from transformers import LlamaConfig\n"
        f"open({str(marker)!r}, 'a').write('code ran\\n')\n"
        "class TinyConfig(LlamaConfig):\n    model_type = 'tiny-custom'\n")
    (model / "modeling_tiny.py").write_text(
        "from transformers import LlamaForCausalLM\nfrom .configuration_tiny import TinyConfig\n"
        "class TinyForCausalLM(LlamaForCausalLM):\n    config_class = TinyConfig\n")

    def custom(config):
        config.update(model_type="tiny-custom", architectures=["TinyForCausalLM"],
                      auto_map={"AutoConfig": "configuration_tiny.TinyConfig",
                                "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"})

    edit_json(model / "config.json", custom)
    return model


def test_remote_code_needs_trust_remote_code(small, fresh_copy, tmp_path):
    marker = tmp_path / "marker"
    model = _custom_code_model(small, fresh_copy, marker)
    for args in (["transplant", model, small["donor"], "-o", tmp_path / "o"],
                 ["evaluate", model, "--text", TEXT]):
        message = assert_user_error(invoke(*args), "defined by Python code shipped with the checkpoint")
        assert "--trust-remote-code" in message
    assert not marker.exists() and not (tmp_path / "o").exists()
    # with the flag, the shipped code runs (a subprocess: transformers caches such code in a modules folder)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_MODULES_CACHE=str(tmp_path / "modules"))
    run = subprocess.run([sys.executable, "-m", "tokensurgeon", "transplant", str(model), str(small["tokenizer"]),
                          "-o", str(tmp_path / "o"), "--trust-remote-code", "--json"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert marker.exists() and (tmp_path / "o" / "modeling_tiny.py").is_file()


def test_auto_map_for_a_native_architecture_runs_no_code(small, fresh_copy, tmp_path):
    marker = tmp_path / "marker"
    model = _custom_code_model(small, fresh_copy, marker)
    edit_json(model / "config.json", lambda config: config.update(model_type="llama"))  # transformers knows it
    assert invoke("transplant", model, small["tokenizer"], "-o", tmp_path / "o", "--json").exit_code == 0
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# 4. clear errors: exit code 2, one line, no traceback (the traceback with --debug)


def _no_tokenizer(model: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()


def _missing_shard(model: Path) -> None:
    edit_json(model / "model.safetensors.index.json",
              lambda index: index["weight_map"].update({"lm_head.weight": "model-00009-of-00009.safetensors"}))


def _escaping_shard(model: Path) -> None:
    edit_json(model / "model.safetensors.index.json",
              lambda index: index["weight_map"].update({"lm_head.weight": "../model.safetensors"}))


def _shard(model: Path) -> None:
    """The small untied model as two shards with an index."""
    tensors = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in parts.items():
        save_file({name: tensors[name] for name in part}, model / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {name: file for file, part in parts.items() for name in part}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))


def _flip_header_length(model: Path) -> None:
    file = model / "model.safetensors"
    file.write_bytes(b"\xff" * 8 + file.read_bytes()[8:])


def _truncate(model: Path) -> None:
    file = model / "model.safetensors"
    file.write_bytes(file.read_bytes()[:5000])


def _garble_header(model: Path) -> None:
    file = model / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[8:20] = b"\x00\xff{}[]\x00\xfe\x01\x02\x03\x04"
    file.write_bytes(bytes(data))


def _embedding_3d(model: Path) -> None:
    mutate_weights(model, lambda t: t.update({"model.embed_tokens.weight": t["model.embed_tokens.weight"].reshape(
        320, 4, 8).contiguous()}))


def _embedding_int(model: Path) -> None:
    mutate_weights(model, lambda t: t.update({"model.embed_tokens.weight": torch.ones(320, 32, dtype=torch.int32)}))


def _embedding_narrow(model: Path) -> None:
    mutate_weights(model, lambda t: t.update({"model.embed_tokens.weight": torch.ones(320, 16,
                                                                                     dtype=torch.bfloat16)}))


def _head_mismatch(model: Path) -> None:
    mutate_weights(model, lambda t: t.update({"lm_head.weight": t["lm_head.weight"][:300].contiguous()}))


def _nonfinite(model: Path) -> None:
    def poison(tensors):
        embed = tensors["model.embed_tokens.weight"]
        embed[17, 3], embed[250] = float("nan"), float("inf")
    mutate_weights(model, poison)


def _nonfinite_head(model: Path) -> None:
    mutate_weights(model, lambda t: t["lm_head.weight"].__setitem__((5, 0), float("-inf")))


def _bad_config_json(model: Path) -> None:
    (model / "config.json").write_text('{"model_type": "llama", ')


def _bad_tokenizer_json(model: Path) -> None:
    (model / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')


def _big_tokenizer(model: Path) -> None:
    """A tokenizer from another model: ids far beyond the 320 embedding rows."""
    _no_tokenizer(model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).write_bytes((TOKENIZERS / "gpt2" / name).read_bytes())


# (case, model to damage, damage, extra args, message fragment)
BAD_INPUTS = [
    ("base directory missing", None, None, [], "not a directory (it does not exist)"),
    ("no config.json", "tokenizer", None, [], "no config.json"),
    ("config.json not JSON", "tied", _bad_config_json, [], "not valid JSON"),
    ("no tokenizer", "tied", _no_tokenizer, [], "no tokenizer files"),
    ("tokenizer.json corrupt", "tied", _bad_tokenizer_json, [], "cannot load tokenizer"),
    ("header length corrupt", "tied", _flip_header_length, [], "corrupt safetensors header"),
    ("header bytes garbled", "tied", _garble_header, [], "corrupt safetensors header"),
    ("file truncated", "tied", _truncate, [], "truncated"),
    ("index names a missing shard", "untied", lambda m: (_shard(m), _missing_shard(m)), [],
     "names shard model-00009-of-00009.safetensors which does not exist"),
    ("index names a file outside", "untied", lambda m: (_shard(m), _escaping_shard(m)), [], "is not a file name"),
    ("embedding not 2-D", "tied", _embedding_3d, [], "expected a 2-D (rows, hidden size) matrix"),
    ("embedding integer dtype", "tied", _embedding_int, [], "has dtype I32"),
    ("embedding width != hidden size", "tied", _embedding_narrow, [], "implies a hidden size of 32"),
    ("head shape != embedding shape", "untied", _head_mismatch, [], "they must match"),
    ("NaN/inf in base embedding", "tied", _nonfinite, [],
     "base input embedding has 33 non-finite values (NaN/inf) in 2 rows, first bad row id 17"),
    ("inf in base head", "untied", _nonfinite_head, [], "base output head has 1 non-finite values"),
    ("base tokenizer beyond base rows", "tied", _big_tokenizer, [], "but the base model has only 320 embedding rows"),
    ("CUDA absent", "tied", None, ["--device", "cuda"], "no CUDA device is available"),
    ("unknown device", "tied", None, ["--device", "abacus"], "unknown device 'abacus'"),
    ("eval text missing", "tied", None, ["--eval-text", "/nonexistent.txt"], "does not exist"),
    ("bad --option", "tied", None, ["--option", "k"], "KEY=VALUE"),
    ("OUT under a file", "tied", None, ["-o", "{file}/sub/out"], "afile is a file, not a directory"),
    ("OUT is a file", "tied", None, ["-o", "{file}"], "exists and is not a directory"),
    ("config transformers cannot build", "tied", lambda m: edit_json(m / "config.json", lambda c: c.update(
        hidden_act=None)), [], "transformers cannot build this architecture"),
    ("tokenizer id far beyond the vocabulary", "tied", lambda m: edit_json(m / "tokenizer.json", lambda t: t[
        "model"]["vocab"].update({"he": 10**9})), [], "token ids are not contiguous: id 1000000000 among 320"),
    ("unknown method", "tied", None, ["--method", "nope"], "nope"),
    # the fuzz test's replayed example (architectures [[]]: TypeError unhashable list), then its kin
    ("architectures holds a list", "tied", lambda m: edit_json(m / "config.json", lambda c: c.update(
        architectures=[[]])), [], "config.json: architectures must be a list of class names, not [[]]"),
    ("model_type a list", "tied", lambda m: edit_json(m / "config.json", lambda c: c.update(
        model_type=[1])), [], "config.json: model_type must be a string, not [1]"),
    ("text_config a list", "tied", lambda m: edit_json(m / "config.json", lambda c: c.update(
        text_config=[])), [], "config.json: text_config must be a JSON object, not []"),
    ("vocab_size a string", "tied", lambda m: edit_json(m / "config.json", lambda c: c.update(
        vocab_size="320")), [], "config.json: vocab_size must be a positive integer, not \"320\""),
]


@pytest.mark.parametrize("case, model, damage, extra, fragment", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(small, fresh_copy, tmp_path, case, model, damage, extra, fragment):
    if case == "CUDA absent" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    base = tmp_path / "missing" if model is None else fresh_copy(small[model], "base")
    if damage:
        damage(base)
    out = tmp_path / "out"
    (tmp_path / "afile").write_text("not a directory")
    extra = [arg.replace("{file}", str(tmp_path / "afile")) for arg in extra]
    with contextlib.ExitStack() as stack:
        if base.exists():
            stack.enter_context(untouched(base))
        assert_user_error(invoke("transplant", base, small["donor"], "-o", out, *extra), fragment)
    if case != "OUT is a file":
        assert not out.exists() and leftovers(out) == []


def test_allow_nonfinite_goes_on_with_a_warning(small, fresh_copy, tmp_path):
    base = fresh_copy(small["tied"], "base")
    _nonfinite(base)
    result = invoke("transplant", base, small["donor"], "-o", tmp_path / "o", "--allow-nonfinite", "--json")
    assert result.exit_code == 0, result.output
    warnings = json.loads(result.stdout)["warnings"]
    assert any("33 non-finite values" in w and "--allow-nonfinite" in w for w in warnings)


@pytest.fixture()
def needs_donor(monkeypatch):
    """Register a method that needs donor embeddings (independent of the real ones in development)."""
    from tokensurgeon.methods import INIT_METHODS, zero

    class NeedsDonor(zero.ZeroMethod):
        name = "needs-donor"
        needs_donor_embeddings = True

    monkeypatch.setitem(INIT_METHODS, "needs-donor", NeedsDonor)
    return "needs-donor"


def test_donor_errors(small, fresh_copy, tmp_path, needs_donor):
    out = tmp_path / "out"
    args = ["--method", needs_donor]
    assert_user_error(invoke("transplant", small["tied"], small["donor"], "-o", out, *args),
                      "needs the donor model's embeddings")
    donor = fresh_copy(small["untied"], "donor")
    _big_tokenizer(donor)  # donor tokenizer ids reach past the donor's 320 embedding rows
    assert_user_error(invoke("transplant", small["tied"], donor, "-o", out, *args),
                      "donor tokenizer defines 50257 ids but the donor model has only 320 embedding rows")
    donor = fresh_copy(small["untied"], "donor_nan")
    _nonfinite(donor)
    assert_user_error(invoke("transplant", small["tied"], donor, "-o", out, *args),
                      "donor input embedding has 33 non-finite values (NaN/inf) in 2 rows, first bad row id 17")
    assert invoke("transplant", small["tied"], donor, "-o", out, *args, "--allow-nonfinite").exit_code == 0
    assert invoke("transplant", small["tied"], donor, "-o", out, "--force").exit_code == 0  # donor rows unused


def test_unreadable_config_is_a_user_error(small, monkeypatch, tmp_path):
    original = Path.read_text

    def denied(self, *args, **kwargs):
        if self.name == "config.json":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)  # root can read a chmod 000 file, so simulate it
    assert_user_error(invoke("transplant", small["tied"], small["donor"], "-o", tmp_path / "o"),
                      "config.json: cannot read (Permission denied)")


def test_inspect_and_evaluate_errors(small, tmp_path):
    assert_user_error(invoke("inspect", tmp_path / "missing", small["tokenizer"]), "does not exist")
    assert_user_error(invoke("inspect", small["tokenizer"], tmp_path), "no tokenizer files")
    assert_user_error(invoke("evaluate", small["tied"], "--text", TEXT, "--device", "abacus"), "unknown device")
    assert_user_error(invoke("evaluate", small["tokenizer"], "--text", TEXT), "no config.json")


def test_debug_shows_the_traceback(tmp_path, small):
    result = invoke("--debug", "inspect", tmp_path / "missing", small["tokenizer"])
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr and "TokenizerError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    plain = invoke("inspect", tmp_path / "missing", small["tokenizer"])
    assert "Traceback" not in plain.stderr


def test_message_with_brackets_is_printed_verbatim(small, fresh_copy, tmp_path):
    base = fresh_copy(small["tied"], "base [bold]x[/bold]")
    _embedding_3d(base)
    message = assert_user_error(invoke("transplant", base, small["donor"], "-o", tmp_path / "o"), "[320, 4, 8]")
    assert "[bold]x[/bold]" in message


# ---------------------------------------------------------------------------------------------
# 5. determinism through the CLI


def test_cli_transplant_twice_is_byte_identical(small, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        result = invoke("transplant", small["sharded"], small["donor"], "-o", out,
                        "--method", "hewitt", "--option", "scale=0.001", "--seed", 7, "--json")
        assert result.exit_code == 0, result.output
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == sorted(p.name for p in outs[1].iterdir())
    assert sum(name.endswith(".safetensors") for name in files) > 1
    for name in files:
        if name not in ("report.json", "report.md", "README.md"):  # these name OUT (the card: in its command)
            assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    reports = [json.loads((out / "report.json").read_text()) for out in outs]
    for report in reports:
        report.pop("timings"), report["output"].pop("path")
    assert reports[0] == reports[1]


# ---------------------------------------------------------------------------------------------
# 6. property tests: hypothesis-generated vocabularies through align_vocabularies

BYTE_ENCODER = {byte: char for char, byte in gpt2_byte_decoder().items()}
SPECIAL_POOL = ["<s>", "</s>", "<unk>", "<pad>", "<|im_start|>", "[CLS]"]
SCHEMES = st.sampled_from([("byte-level", False), ("metaspace", True), ("metaspace", False), ("plain", False)])
RAW = st.one_of(st.binary(min_size=0, max_size=4), st.sampled_from([b" ", b" the", b"the", b"\xd8", b"\xd8\xb3",
                                                                     b"A", b"\xe0\xa4", b""]))


def spell(raw: bytes, scheme: str, byte_fallback: bool, style: int) -> str:
    """A token string for the bytes under the scheme's conventions (sometimes deliberately odd)."""
    if scheme == "byte-level" and style != 3:
        return "".join(BYTE_ENCODER[b] for b in raw)
    if scheme == "metaspace" and byte_fallback and len(raw) == 1 and style in (1, 2):
        return f"<0x{raw[0]:02X}>" if style == 1 else f"<0x{raw[0]:02x}>"
    text = raw.decode("utf-8", errors="replace")
    return text.replace(" ", "\u2581") if scheme == "metaspace" and style != 3 else text


@st.composite
def vocabularies(draw, pool: list[bytes] | None = None) -> Vocabulary:
    scheme, byte_fallback = draw(SCHEMES)
    size = draw(st.integers(min_value=0, max_value=40))
    raw_source = st.sampled_from(pool) if pool else RAW
    tokens: list[str | None] = []
    canonical: list[bytes | None] = []
    specials: dict[int, str] = {}
    fallback: set[int] = set()
    for token_id in range(size):
        kind = draw(st.sampled_from(["ordinary"] * 6 + ["special", "undefined", "text"]))
        if kind == "special":
            content = draw(st.sampled_from(SPECIAL_POOL))
            tokens.append(content)
            canonical.append(None)
            specials[token_id] = content
            continue
        if kind == "undefined":
            tokens.append(None)
            canonical.append(None)
            continue
        token = (draw(st.text(max_size=4)) if kind == "text"
                 else spell(draw(raw_source), scheme, byte_fallback, draw(st.integers(0, 3))))
        tokens.append(token)
        canonical.append(canonical_bytes(token, scheme, byte_fallback=byte_fallback))
        if byte_fallback and canonical_bytes(token, scheme, byte_fallback=True) != canonical_bytes(
                token, scheme, byte_fallback=False):
            fallback.add(token_id)
    roles = {}
    for role in ("bos", "eos", "unk", "pad"):
        if specials and draw(st.booleans()):
            roles[role] = draw(st.sampled_from(sorted(specials)))
    return Vocabulary(kind=scheme, scheme=scheme, tokens=tuple(tokens), canonical=tuple(canonical),
                      specials=specials, roles=roles, byte_fallback=frozenset(fallback))


@st.composite
def vocabulary_pairs(draw) -> tuple[Vocabulary, Vocabulary, int]:
    pool = draw(st.lists(RAW, min_size=1, max_size=12))  # shared bytes so that the two overlap
    return draw(vocabularies(pool)), draw(vocabularies(pool)), draw(st.integers(0, 50))


def check_alignment(base: Vocabulary, donor: Vocabulary, n_rows: int) -> None:
    alignment = align_vocabularies(base, donor, n_rows=n_rows)
    lookup = base.bytes_to_id()
    assert alignment.n_rows == len(alignment.match) == max(n_rows, donor.size)
    for donor_id, (kind, source) in enumerate(zip(alignment.match, alignment.source)):
        assert kind in (*COPIED, *COMPUTED, "padding")  # exactly one kind per row
        assert (source >= 0) == (kind in COPIED)
        if kind in ("exact", "bytes"):
            assert donor.canonical[donor_id] is not None and donor_id not in donor.specials
            assert base.canonical[source] == donor.canonical[donor_id]  # copied rows mean the same bytes
            assert source not in base.specials and lookup[donor.canonical[donor_id]] == source
            assert (base.tokens[source] == donor.tokens[donor_id]) == (kind == "exact")
        elif kind in ("special-role", "special-content"):
            assert donor_id in donor.specials and source in base.specials
            if kind == "special-content":
                assert base.specials[source] == donor.specials[donor_id]
            else:
                assert any(donor.roles.get(r) == donor_id and base.roles.get(r) == source for r in donor.roles)
        elif kind == "new":
            assert donor.canonical[donor_id] is not None and donor.canonical[donor_id] not in lookup
        elif kind == "new-special":
            assert donor.specials[donor_id] not in base.specials.values()
            assert not any(donor.roles.get(r) == donor_id and r in base.roles for r in donor.roles)
        else:
            assert donor_id >= donor.size or donor.tokens[donor_id] is None


@settings(max_examples=300, deadline=None)
@given(vocabulary_pairs())
def test_alignment_invariants(pair):
    check_alignment(*pair)


@settings(max_examples=150, deadline=None)
@given(vocabularies())
def test_identity_alignment_copies_everything(vocab):
    check_alignment(vocab, vocab, 0)
    alignment = align_vocabularies(vocab, vocab)
    for token_id, (kind, source) in enumerate(zip(alignment.match, alignment.source)):
        if vocab.tokens[token_id] is None:
            assert kind == "padding"
        else:
            assert kind in COPIED
            if token_id in vocab.specials:
                assert vocab.specials[source] == vocab.specials[token_id]
            else:
                assert vocab.canonical[source] == vocab.canonical[token_id]
                if vocab.canonical.count(vocab.canonical[token_id]) == 1:
                    assert source == token_id and kind == "exact"


# ---------------------------------------------------------------------------------------------
# 6b. fuzz: corrupted safetensors headers and tokenizer.json files through the CLI


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Fail instead of hanging: SIGALRM interrupts an example that runs too long."""
    def expire(signum, frame):
        raise TimeoutError(f"an example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def corruptions(draw, length: int) -> tuple[str, list[tuple[int, int]] | int]:
    """Flip 1-4 bytes (xor with a non-zero mask) in the first `length` bytes, or truncate inside them."""
    if draw(st.integers(0, 3)) == 0:
        return "truncate", draw(st.integers(0, length - 1))
    flips = draw(st.lists(st.tuples(st.integers(0, length - 1), st.integers(1, 255)), min_size=1, max_size=4))
    return "flip", flips


def corrupt(data: bytes, corruption) -> bytes:
    kind, detail = corruption
    if kind == "truncate":
        return data[:detail]
    damaged = bytearray(data)
    for position, mask in detail:
        damaged[position] ^= mask
    return bytes(damaged)


JSON_VALUES = st.one_of(st.integers(-3, 400), st.integers(-2**40, 2**64), st.text(max_size=6), st.none(),
                        st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.just([]), st.just({}),
                        st.lists(st.integers(-2, 400), max_size=3))


def _json_paths(node, prefix=()):
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from _json_paths(value, (*prefix, key))


def mutate_json(draw, document):
    """Replace or delete 1-3 values anywhere in a parsed JSON document (valid JSON, wrong content)."""
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_json_paths(document))
        path = paths[draw(st.integers(0, len(paths) - 1))]
        if not path:
            document = draw(JSON_VALUES)
            continue
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return document


def damage_safetensors(draw, pristine: bytes) -> bytes:
    """Bytes flipped or the file truncated within its first 8 + header bytes, or the header JSON mutated."""
    header_end = 8 + int.from_bytes(pristine[:8], "little")
    if draw(st.booleans()):
        return corrupt(pristine, draw(corruptions(header_end)))
    header = json.dumps(mutate_json(draw, json.loads(pristine[8:header_end]))).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + pristine[header_end:]


def damage_json_file(draw, pristine: bytes) -> bytes:
    if draw(st.booleans()):
        return corrupt(pristine, draw(corruptions(len(pristine))))
    return json.dumps(mutate_json(draw, json.loads(pristine))).encode()


def check_cli_outcome(result, out: Path, label: str) -> None:
    """Exit 2 with one line (no traceback, no output), or a complete run (the damage was harmless)."""
    assert result.exit_code in (0, 2), (result.exit_code, result.output, repr(result.exception))
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    if out is not None:
        assert leftovers(out) == []
        assert not out.exists() if result.exit_code == 2 else (out / "report.json").is_file()


@pytest.fixture(scope="module")
def fuzz_dirs(small, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    model = root / "model"
    model.mkdir()
    for file in small["tied"].iterdir():
        (model / file.name).write_bytes(file.read_bytes())
    tokenizer = root / "tokenizer"
    tokenizer.mkdir()
    for file in small["tokenizer"].iterdir():
        (tokenizer / file.name).write_bytes(file.read_bytes())
    return {"root": root, "model": model, "tokenizer": tokenizer}


@contextlib.contextmanager
def damaged(file: Path, backup: Path, damage) -> Iterator[None]:
    """Replace ``file`` by a damaged copy of its pristine bytes for the block, then restore it."""
    if not backup.exists():
        backup.write_bytes(file.read_bytes())
    pristine = backup.read_bytes()
    file.write_bytes(damage(pristine))
    try:
        yield
    finally:
        file.write_bytes(pristine)


def run_fuzz_case(out: Path | None, label: str, *args) -> None:
    try:
        with no_hang():
            result = invoke(*args)
        check_cli_outcome(result, out, label)
    finally:
        if out is not None and out.exists():
            shutil.rmtree(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_safetensors_header_through_transplant(fuzz_dirs, data):
    out = fuzz_dirs["root"] / "out"
    with damaged(fuzz_dirs["model"] / "model.safetensors", fuzz_dirs["root"] / "original.safetensors",
                 lambda raw: damage_safetensors(data.draw, raw)):
        run_fuzz_case(out, "safetensors/transplant", "transplant", fuzz_dirs["model"], fuzz_dirs["tokenizer"],
                      "-o", out, "--json")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(["inspect", "transplant"]))
def test_fuzz_tokenizer_json_through_inspect_and_transplant(fuzz_dirs, data, command):
    out = fuzz_dirs["root"] / "out" if command == "transplant" else None
    args = (("inspect", fuzz_dirs["tokenizer"], fuzz_dirs["model"], "--json") if command == "inspect"
            else ("transplant", fuzz_dirs["model"], fuzz_dirs["tokenizer"], "-o", out, "--json"))
    with damaged(fuzz_dirs["tokenizer"] / "tokenizer.json", fuzz_dirs["root"] / "original-tokenizer.json",
                 lambda raw: damage_json_file(data.draw, raw)):
        run_fuzz_case(out, f"tokenizer.json/{command}", *args)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_config_json_through_transplant(fuzz_dirs, data):
    out = fuzz_dirs["root"] / "out"
    with damaged(fuzz_dirs["model"] / "config.json", fuzz_dirs["root"] / "original-config.json",
                 lambda raw: damage_json_file(data.draw, raw)):
        run_fuzz_case(out, "config.json/transplant", "transplant", fuzz_dirs["model"], fuzz_dirs["tokenizer"],
                      "-o", out, "--json")


@pytest.mark.parametrize("extra, fragment", [
    (["--pad-to-multiple", "300000000"], "too large"),  # 17.8: wrote 43 GB before it was stopped
    (["--method", "omp", "--option", "k=abc"], "method 'omp': option k='abc' is not an integer"),  # 17.7
    (["--method", "omp", "--option", "k=2.5"], "method 'omp': option k=2.5 is not an integer"),
    (["--method", "omp", "--option", "k=1e999"], "not a finite number"),
    (["--seed", str(2 ** 70)], "--seed must be an integer"),
])
def test_bad_options_are_one_line_before_any_work(small, tmp_path, extra, fragment):
    """Issue 17.7/17.8: refused in one line, and nothing is written beside OUT."""
    out = tmp_path / "out"
    assert_user_error(invoke("transplant", small["tied"], small["donor_model"], "-o", out, *extra), fragment)
    assert not out.exists() and leftovers(out) == []


# ---------------------------------------------------------------------------------------------
# issue 17.10: messages that name the real cause


def test_a_non_numeric_option_says_it_is_not_a_number(small, tmp_path):
    """hewitt scale=abc said the method does not take scale, then showed Python's comparison error."""
    line = assert_user_error(invoke("transplant", small["untied"], small["donor"], "-o", tmp_path / "out",
                                    "--method", "hewitt", "--option", "scale=abc"),
                             "method 'hewitt': option scale='abc' is not a number")
    assert "does not take" not in line and "instances of" not in line


def test_a_read_only_file_system_is_named_as_such(small, tmp_path, monkeypatch):
    """A read-only mount was reported as permission denied (os.access says EROFS too)."""
    readonly = tmp_path / "mnt"
    readonly.mkdir()
    real_statvfs = os.statvfs

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly() if Path(path) == readonly else real_statvfs(path))
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not mode & os.W_OK)  # what a read-only mount says
    line = assert_user_error(invoke("transplant", small["tied"], small["donor"], "-o", readonly / "out"),
                             f"output {readonly / 'out'}: {readonly} is on a read-only file system")
    assert "permission" not in line


def test_disk_full_while_copying_a_donor_file_names_the_output(small, tmp_path, monkeypatch):
    """copyfile's error names its source first: the message blamed the donor's file as the write location."""
    real_copyfile = shutil.copyfile

    def full_disk(source, target, **kwargs):
        if ".out.partial-" in str(target):
            raise OSError(errno.ENOSPC, "No space left on device", str(source), None, str(target))
        return real_copyfile(source, target, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    out = tmp_path / "out"
    line = assert_user_error(invoke("transplant", small["tied"], small["donor"], "-o", out),
                             f"out of disk space while writing {out}")
    assert str(small["donor"]) not in line and str(small["tied"]) not in line
    assert not out.exists() and leftovers(out) == []


@pytest.mark.parametrize("with_tokenizer_json", [True, False])
def test_a_tokenizer_with_shipped_code_names_trust_remote_code(small, fresh_copy, tmp_path, with_tokenizer_json):
    donor = fresh_copy(small["donor"], "donor")
    spec = json.loads((donor / "tokenizer.json").read_text())
    (donor / "vocab.json").write_text(json.dumps(spec["model"]["vocab"]))
    (donor / "merges.txt").write_text("#version: 0.2\n" + "\n".join(
        m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]) + "\n")
    if not with_tokenizer_json:
        (donor / "tokenizer.json").unlink()
    edit_json(donor / "tokenizer_config.json", lambda c: c.update(
        tokenizer_class="AcmeTokenizer", auto_map={"AutoTokenizer": ["tokenization_acme.AcmeTokenizer", None]}))
    (donor / "tokenization_acme.py").write_text("raise SystemExit('tokenizer code ran')\n")
    assert_user_error(invoke("transplant", small["tied"], donor, "-o", tmp_path / "out"), "--trust-remote-code")


@pytest.mark.parametrize("where", ["directory", "file"])
def test_a_gguf_donor_gets_a_conversion_hint(small, tmp_path, where):
    folder = tmp_path / "donor"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"GGUF" + bytes(60))
    donor = folder if where == "directory" else folder / "model.gguf"
    line = assert_user_error(invoke("transplant", small["tied"], donor, "-o", tmp_path / "out"), "GGUF")
    assert "convert it to a Hugging Face directory" in line and "gguf_file=" in line


def test_an_empty_eval_text_is_refused_before_the_transplant_runs(small, tmp_path, monkeypatch):
    import tokensurgeon.pipeline.transplant as job

    def never(*args, **kwargs):
        raise AssertionError("the transplant ran before the texts were checked")

    monkeypatch.setattr(job, "open_session", never)
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    out = tmp_path / "out"
    assert_user_error(invoke("transplant", small["tied"], small["donor"], "-o", out, "--eval-text", empty),
                      f"text file {empty} is empty")
    assert not out.exists() and leftovers(out) == []


def _rows_per_text(command: str, small, texts: list[Path], tmp_path: Path) -> list[str]:
    """The text labels of each command's JSON result for these texts."""
    text_args = [arg for path in texts for arg in ("--text", path)]
    if command == "evaluate":
        result = invoke("evaluate", small["tied"], *text_args, "--json")
        return [score["label"] for score in json.loads(result.stdout)[0]["scores"]]
    if command == "transplant":
        result = invoke("transplant", small["tied"], small["donor"], "-o", tmp_path / "t", "--json",
                        *[arg for path in texts for arg in ("--eval-text", path)])
        return [row["text"] for row in json.loads(result.stdout)["evaluation"]]
    if command == "compare":
        result = invoke("compare", small["tied"], small["donor"], *text_args, "--methods", "zero", "--json")
        return [row["text"] for row in json.loads(result.stdout)["entries"][0]["evaluation"]]
    assert invoke("transplant", small["tied"], small["donor"], "-o", tmp_path / "patched").exit_code == 0
    result = invoke("heal", tmp_path / "patched", *text_args, "--eval-text", texts[0], "--eval-text", texts[1],
                    "-o", tmp_path / "healed", "--objective", "lm", "--train", "embeddings", "--steps", "1",
                    "--batch-size", "1", "--context", "16", "--eval-max-bytes", "400", "--no-compare-base", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    return [row["text"] for row in data["texts"]] + [row["text"] for row in data["unseen"]]


@pytest.mark.parametrize("command", ["evaluate", "transplant", "compare", "heal"])
def test_texts_with_one_file_name_from_different_folders_are_separate_rows(small, tmp_path, command):
    """a/x/news.txt and b/x/news.txt collapsed into one row (one text silently dropped)."""
    news = TEXT.read_text()
    texts = [tmp_path / "a" / "x" / "news.txt", tmp_path / "b" / "x" / "news.txt"]
    for path, part in zip(texts, (news[:2500], news[2500:5000])):
        path.parent.mkdir(parents=True)
        path.write_text(part)
    labels = _rows_per_text(command, small, texts, tmp_path)
    expected = ["a/x/news.txt", "b/x/news.txt"]
    assert labels == (expected * 2 if command == "heal" else expected)


# ---------------------------------------------------------------------------------------------
# issue 17.11: a tokenizer-only method reads only the donor's tokenizer files


@pytest.mark.parametrize("kind", ["pickle-only", "custom-code"])
def test_a_tokenizer_only_method_never_opens_the_donor_model(small, fresh_copy, tmp_path, kind):
    """A pickle-only or custom-code donor model needed --allow-pickle/--trust-remote-code for its tokenizer.json."""
    donor = fresh_copy(small["donor"], "donor")
    if kind == "pickle-only":
        (donor / "config.json").write_text((small["donor_model"] / "config.json").read_text())
        torch.save({"model.embed_tokens.weight": torch.zeros(400, 32)}, donor / "pytorch_model.bin")
    else:
        (donor / "config.json").write_text(json.dumps({
            "model_type": "acme_lm", "architectures": ["AcmeForCausalLM"],
            "auto_map": {"AutoModelForCausalLM": "modeling_acme.AcmeLM"}}))
        (donor / "modeling_acme.py").write_text("raise SystemExit('custom code ran')\n")
        shutil.copyfile(small["donor_model"] / "model.safetensors", donor / "model.safetensors")
    out = tmp_path / "out"
    result = invoke("transplant", small["tied"], donor, "-o", out, "--method", "subword-mean", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 400  # the donor's vocabulary
