"""The architecture matrix (issue 17) and the reproductions of its numbered defects.

Matrix: a tiny random checkpoint per architecture (tests/tiny_archs.py), transplanted once per session
through the CLI with a real donor tokenizer from ../shared/tokenizers, then checked the way a user would:
it loads with the input's Auto class without missing or mismatched weights, every vocabulary-sized
tensor follows the new vocabulary, config.json and generation_config.json agree on special ids that
exist, batched generation with left padding runs past a finished sequence, tying survives, and every
tensor that is not vocabulary-sized is copied unchanged.

Checks that fail today carry ``xfail(strict=True, reason="issue 17.N: cause")``; the fix removes the marker.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import TOKENIZERS
from tiny_archs import ARCHS, Arch, build_arch, config_vocab_sizes, donor_with_extras, read_json

# The matrix runs as its own CI step (.ci/run: pytest -m matrix): ~35 transplants and model loads take
# minutes even on tiny models, more than the rest of the suite together.
pytestmark = pytest.mark.matrix

SPECIAL_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _app():
    """The typer app, wherever the CLI package keeps it."""
    from tokensurgeon.cli import app

    return app


def cli(*args: object) -> tuple[int, str, str]:
    """Run tokensurgeon in-process; (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(_app(), [str(a) for a in args])
    stderr = getattr(result, "stderr", "") if result.stderr_bytes is not None else ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += f"\n{type(result.exception).__name__}: {result.exception}"
    return result.exit_code, result.stdout, stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------- the matrix: build and transplant once

class Matrix:
    """Base checkpoints and their transplants, built on first use and kept for the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bases: dict[str, Path] = {}
        self.runs: dict[str, tuple[int, str, Path]] = {}

    def base(self, name: str) -> Path:
        if name not in self.bases:
            self.bases[name] = build_arch(ARCHS[name], self.root / "base" / name, TOKENIZERS)
        return self.bases[name]

    def run(self, name: str) -> tuple[int, str, Path]:
        """(exit code, stderr, OUT) of transplanting arch ``name`` with its donor tokenizer."""
        if name not in self.runs:
            out = self.root / "out" / name
            donor = donor_with_extras(ARCHS[name], self.root / "donor" / name, TOKENIZERS)
            code, _, stderr = cli("transplant", self.base(name), donor, "-o", out)
            self.runs[name] = (code, stderr, out)
        return self.runs[name]

    def out(self, name: str) -> Path:
        code, stderr, out = self.run(name)
        assert code == 0, f"transplant of {name} failed: {stderr.strip()[-500:]}"
        return out


@pytest.fixture(scope="session")
def matrix(tmp_path_factory) -> Matrix:
    return Matrix(tmp_path_factory.mktemp("archs"))


# Known failures today: (arch, check) -> "issue 17.N: root cause". A check that depends on a failed
# transplant fails with it. Issue 17.2-17.4 are fixed: none left.
TRANSPLANT_FAILS: dict[str, str] = {}
XFAIL: dict[tuple[str, str], str] = {}
CHECKS = ("transplant", "loads", "vocab_tensors", "special_ids", "generate", "tied", "others_unchanged")


def _params(check: str) -> list:
    params = []
    for name in ARCHS:
        reason = TRANSPLANT_FAILS.get(name) or XFAIL.get((name, check))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def _tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (file, shape) over every safetensors file of a checkpoint, from the headers."""
    found = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                found[key] = (file.name, tuple(handle.get_slice(key).get_shape()))
    return found


def _tensor(path: Path, file: str, key: str) -> torch.Tensor:
    with safe_open(path / file, framework="pt") as handle:
        return handle.get_tensor(key)


def _rows(out: Path) -> int:
    config = read_json(out / "config.json")
    return (config.get("text_config") or {}).get("vocab_size") or config["vocab_size"]


def _auto_class(arch: Arch):
    import transformers

    return getattr(transformers, arch.auto)


def _load(arch: Arch, path: Path):
    """(model, loading info) with the input's Auto class, float32, eval mode."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    model, info = _auto_class(arch).from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    return model.eval(), info


def _tied(model) -> bool:
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    return head is not None and (head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr())


def special_id_problems(path: Path) -> list[str]:
    """What is wrong with the special ids of a checkpoint's config.json and generation_config.json:
    ids outside the embedding rows, or the two files (and text_config) disagreeing."""
    config, generation = read_json(path / "config.json"), read_json(path / "generation_config.json")
    rows = _rows(path)
    places = {"config.json": config, "config.json text_config": config.get("text_config") or {},
              "generation_config.json": generation}
    problems = []
    for key in SPECIAL_KEYS:
        seen = {where: part[key] for where, part in places.items() if key in part}
        for where, value in seen.items():
            for one in value if isinstance(value, list) else [value]:
                if one is not None and not (isinstance(one, int) and 0 <= one < rows):
                    problems.append(f"{where} {key}={value} is not a row of the {rows}-row embedding")
        normal = {json.dumps(v if not isinstance(v, list) or len(v) != 1 else v[0]) for v in seen.values()}
        if len(normal) > 1:
            problems.append(f"{key} disagrees: {seen}")
    return problems


# ---------------------------------------------------------------- the matrix: checks

@pytest.mark.parametrize("name", _params("transplant"))
def test_matrix_transplant(matrix, name):
    code, stderr, _ = matrix.run(name)
    assert code == 0, stderr.strip()[-500:]


@pytest.mark.parametrize("name", _params("loads"))
def test_matrix_loads_with_input_auto_class(matrix, name):
    """The output loads with the Auto class the input loads with: no missing, unexpected or mismatched
    weights, and the same model class."""
    out = matrix.out(name)
    _, info = _load(ARCHS[name], out)
    problems = {key: value for key, value in info.items() if value and key != "error_msgs"}
    assert not problems, problems
    assert read_json(out / "config.json")["architectures"] == read_json(matrix.base(name) / "config.json")[
        "architectures"]


@pytest.mark.parametrize("name", _params("vocab_tensors"))
def test_matrix_vocab_sized_tensors_follow(matrix, name):
    """Every tensor with a vocabulary-sized dimension in the base (embeddings, heads, output biases,
    per-layer tables) has the new row count in the output, in the file and in the loaded model; and
    every vocab size the config states is the new one."""
    base, out = matrix.base(name), matrix.out(name)
    old = config_vocab_sizes(read_json(base / "config.json"))
    rows = _rows(out)
    assert config_vocab_sizes(read_json(out / "config.json")) == {rows}
    before, after = _tensors(base), _tensors(out)
    stale = {}
    for key, (_, shape) in before.items():
        if any(dim in old for dim in shape):
            want = tuple(rows if dim in old else dim for dim in shape)
            if after.get(key, (None, None))[1] != want:
                stale[key] = (shape, after.get(key, (None, None))[1], want)
    assert not stale, f"vocabulary-sized tensors not on the new vocabulary (base, output, wanted): {stale}"
    model, _ = _load(ARCHS[name], out)
    loaded = {n: tuple(t.shape) for n, t in list(model.named_parameters()) + list(model.named_buffers())
              if any(dim in old for dim in t.shape) and rows not in t.shape}  # new size may equal the old
    assert not loaded, f"loaded model still has old-vocabulary tensors: {loaded}"


@pytest.mark.parametrize("name", _params("special_ids"))
def test_matrix_special_ids_valid_and_equal(matrix, name):
    assert special_id_problems(matrix.base(name)) == [], "the base itself is inconsistent (test setup)"
    assert special_id_problems(matrix.out(name)) == []


def batched_generate(arch: Arch, path: Path) -> torch.Tensor:
    """Greedy generation on two prompts of different length with left padding, then again with the first
    prompt's first new token as EOS, so one sequence finishes early and is padded with the model's own
    pad id (generation_config's) while the other goes on."""
    from transformers import AutoTokenizer

    model, _ = _load(arch, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    batch = tokenizer(["Hello there", "The quick brown fox jumps over the lazy dog and"], return_tensors="pt",
                      padding=True)
    with torch.no_grad():
        first = model.generate(**batch, max_new_tokens=3, do_sample=False)
        stop = int(first[0, batch["input_ids"].shape[1]])
        again = model.generate(**batch, max_new_tokens=4, do_sample=False, eos_token_id=stop)
    assert first.shape[0] == 2 and again.shape[0] == 2
    return again


@pytest.mark.parametrize("name", _params("generate"))
def test_matrix_batched_generate(matrix, name):
    batched_generate(ARCHS[name], matrix.out(name))


@pytest.mark.parametrize("name", _params("tied"))
def test_matrix_tied_stays_tied(matrix, name):
    base_model, _ = _load(ARCHS[name], matrix.base(name))
    out_model, _ = _load(ARCHS[name], matrix.out(name))
    assert _tied(out_model) == _tied(base_model)
    if _tied(base_model):
        assert torch.equal(out_model.get_input_embeddings().weight, out_model.get_output_embeddings().weight)


@pytest.mark.parametrize("name", _params("others_unchanged"))
def test_matrix_other_tensors_copied(matrix, name):
    """Tensors without a vocabulary dimension (every layer, vision towers included) are copied bit for bit."""
    base, out = matrix.base(name), matrix.out(name)
    old = config_vocab_sizes(read_json(base / "config.json"))
    before, after = _tensors(base), _tensors(out)
    for key, (file, shape) in before.items():
        if any(dim in old for dim in shape):
            continue
        assert key in after, f"{key} missing from the output"
        assert torch.equal(_tensor(base, file, key), _tensor(out, after[key][0], key)), key


# ---------------------------------------------------------------- issue 17 items, one reproduction each

def _copy(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target, symlinks=True))


def _tokenizer_dir(target: Path, name: str = "gpt2") -> Path:
    """A donor tokenizer directory: a copy of a shared tokenizer's files."""
    target.mkdir(parents=True, exist_ok=True)
    for file in (TOKENIZERS / name).iterdir():
        if file.name != "SOURCE.txt":
            shutil.copyfile(file, target / file.name)
    return target


def _tiny_llama(target: Path, tokenizer: str, **config: object) -> Path:
    """A 2-layer Llama with a shared tokenizer; ``config`` overrides its settings (special ids...)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZERS / tokenizer)
    settings = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id) | config
    torch.manual_seed(3)
    LlamaForCausalLM(LlamaConfig(**settings)).save_pretrained(target)
    tok.save_pretrained(target)
    return target


# 17.2: vocabulary-sized tensors besides the embeddings -> matrix tests vocab_tensors/loads for phi, gptj,
# codegen (lm_head.bias) and gemma3n (embed_tokens_per_layer).

# 17.3: stale special ids in generation_config.json

def test_generation_config_ids_qwen2_base(matrix):
    out = matrix.out("qwen2")
    assert special_id_problems(out) == []
    batched_generate(ARCHS["qwen2"], out)


def test_generation_config_ids_qwen2_donor(matrix, tmp_path):
    code, _, stderr = cli("transplant", matrix.base("llama"), TOKENIZERS / "qwen2", "-o", tmp_path / "out")
    assert code == 0, stderr
    assert special_id_problems(tmp_path / "out") == []


def test_generation_config_ids_donor_config_null_bos_eos(matrix, tmp_path):
    donor = _tiny_llama(tmp_path / "donor", "gpt2", bos_token_id=None, eos_token_id=None, pad_token_id=None)
    code, _, stderr = cli("transplant", matrix.base("llama"), donor, "-o", tmp_path / "out")
    assert code == 0, stderr
    assert special_id_problems(tmp_path / "out") == []


# 17.4: tensor names transformers renames on load, as base (matrix: gpt_neox, gemma3_vision, llava) and as
# omp donor

@pytest.mark.parametrize("donor_arch, base_arch", [
    pytest.param("gpt_neox", "llama", id="gpt_neox-embed_out"),
    pytest.param("gemma3_vision", "gpt2", id="gemma3-language_model"),
    pytest.param("llava", "gpt2", id="llava-language_model"),
])
def test_renamed_tensors_as_omp_donor(matrix, tmp_path, donor_arch, base_arch):
    code, _, stderr = cli("transplant", matrix.base(base_arch), matrix.base(donor_arch), "-o", tmp_path / "out",
                          "--method", "omp", "--option", "k=4")  # small k: the names are the point
    assert code == 0, stderr
    _load(ARCHS[base_arch], tmp_path / "out")


# 17.5: multimodal models keep class and vision tower (matrix: gemma3_vision, llava, qwen2_vl: loads,
# others_unchanged, generate); seq2seq and encoder-only models are refused with one line naming the kinds
# that are supported

def _seq2seq_or_encoder(kind: str, target: Path) -> Path:
    from transformers import (AutoTokenizer, BartConfig, BartForConditionalGeneration, BertConfig, BertForMaskedLM,
                              T5Config, T5ForConditionalGeneration)

    tok = AutoTokenizer.from_pretrained(TOKENIZERS / "llama2")
    vocab = len(tok)
    if kind == "t5":
        model = T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                    num_heads=2, decoder_start_token_id=0, pad_token_id=0))
    elif kind == "bart":
        model = BartForConditionalGeneration(BartConfig(vocab_size=vocab, d_model=32, encoder_layers=1,
                                                        decoder_layers=1, encoder_attention_heads=2,
                                                        decoder_attention_heads=2, encoder_ffn_dim=64,
                                                        decoder_ffn_dim=64, max_position_embeddings=64))
    else:
        model = BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


@pytest.mark.parametrize("kind", ["t5", "bart", "bert"])
def test_unsupported_kinds_refused_in_one_line(tmp_path, kind):
    """Either refused with one line that says which model kinds are supported, or transplanted so that the
    output loads with its own class with every vocabulary-sized tensor resized (BERT's decoder bias)."""
    base = _seq2seq_or_encoder(kind, tmp_path / kind)
    code, _, stderr = cli("transplant", base, TOKENIZERS / "gpt2", "-o", tmp_path / "out")
    if code == 0:
        import transformers

        config = read_json(tmp_path / "out" / "config.json")
        model_class = getattr(transformers, config["architectures"][0])
        model_class.from_pretrained(tmp_path / "out")  # raises on a mismatched (stale) tensor
        assert config["vocab_size"] == _rows(tmp_path / "out")
        return
    lines = error_lines(stderr)
    assert code == 2 and len(lines) == 1, stderr
    message = lines[0].replace(str(base), "BASE").replace(str(tmp_path), "TMP")
    assert "supported" in message and "causal" in message.lower(), message
    assert "cannot build this architecture" not in message, message


# 17.6: tokenizer formats

def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _field(number: int, payload: bytes | int | float | str) -> bytes:
    if isinstance(payload, float):
        return _varint(number << 3 | 5) + struct.pack("<f", payload)
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def sentencepiece_model(pieces: list[str]) -> bytes:
    """A valid SentencePiece BPE ModelProto (hand-encoded protobuf): <unk>, <s>, </s>, then ``pieces``."""
    entries = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)] + [(p, -float(i), 1)
                                                                        for i, p in enumerate(pieces)]
    body = b"".join(_field(1, _field(1, p) + _field(2, s) + _field(3, t)) for p, s, t in entries)
    trainer = _field(3, 2) + _field(4, len(entries)) + _field(40, 0) + _field(41, 1) + _field(42, 2)
    normalizer = _field(1, "identity") + _field(3, 1) + _field(4, 1) + _field(5, 1)
    return body + _field(2, trainer) + _field(3, normalizer)


@pytest.mark.parametrize("settings", ["LlamaTokenizer", pytest.param(None, id="no-tokenizer-config")])
def test_sentencepiece_model_without_tokenizer_json(matrix, tmp_path, settings):
    """A base whose tokenizer is only tokenizer.model: transplanted, or one line naming what to install."""
    base = _copy(matrix.base("llama"), tmp_path / "base")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (base / name).unlink(missing_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    (base / "tokenizer.model").write_bytes(sentencepiece_model(["\u2581"] + letters + ["\u2581t", "he", "\u2581the"]))
    if settings:
        (base / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": settings, "bos_token": "<s>",
                                                                "eos_token": "</s>", "unk_token": "<unk>"}))
    code, _, stderr = cli("transplant", base, TOKENIZERS / "gpt2", "-o", tmp_path / "out")
    if code != 0:
        lines = error_lines(stderr)
        message = lines[0].replace(str(base), "BASE") if lines else ""
        assert code == 2 and len(lines) == 1 and "sentencepiece" in message.lower(), stderr


def _vocab_merges_donor(target: Path) -> Path:
    """gpt2's tokenizer as vocab.json + merges.txt (no tokenizer.json)."""
    spec = json.loads((TOKENIZERS / "gpt2" / "tokenizer.json").read_text())
    target.mkdir(parents=True)
    (target / "vocab.json").write_text(json.dumps(spec["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    shutil.copyfile(TOKENIZERS / "gpt2" / "tokenizer_config.json", target / "tokenizer_config.json")
    return target


def test_vocab_merges_donor_keeps_bos_policy(matrix, tmp_path):
    from transformers import AutoTokenizer

    base = matrix.base("llama")
    assert AutoTokenizer.from_pretrained(base)("hello")["input_ids"][0] == 1  # the base prepends <s>
    donor = _vocab_merges_donor(tmp_path / "donor")
    code, _, stderr = cli("transplant", base, donor, "-o", tmp_path / "out")
    assert code == 0, stderr
    patched = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert patched.bos_token_id is not None and patched("hello")["input_ids"][0] == patched.bos_token_id


# 17.10: two texts with one file name from different folders are two rows

def _two_texts(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "a" / "text.txt", tmp_path / "b" / "text.txt"
    for path, words in ((first, "alpha beta gamma delta "), (second, "the quick brown fox jumps ")):
        path.parent.mkdir(parents=True)
        path.write_text(words * 40)
    return first, second


def test_same_name_texts_two_rows_evaluate(matrix, tmp_path):
    first, second = _two_texts(tmp_path)
    code, stdout, stderr = cli("evaluate", matrix.base("llama"), "--text", first, "--text", second, "--json",
                               "--device", "cpu")
    assert code == 0, stderr
    assert len(json.loads(stdout)[0]["scores"]) == 2


def test_same_name_texts_two_rows_transplant(matrix, tmp_path):
    first, second = _two_texts(tmp_path)
    code, stdout, stderr = cli("transplant", matrix.base("llama"), TOKENIZERS / "mistral-v1", "-o", tmp_path / "out",
                               "--eval-text", first, "--eval-text", second, "--json", "--device", "cpu")
    assert code == 0, stderr
    assert len(json.loads(stdout)["evaluation"]) == 2


# 17.11: tokenizer-only methods never open the donor as a model

def test_tokenizer_only_method_pickle_donor(matrix, tmp_path):
    donor = _tokenizer_dir(tmp_path / "donor")
    (donor / "config.json").write_text((matrix.base("llama") / "config.json").read_text())
    torch.save({"model.embed_tokens.weight": torch.zeros(4, 4)}, donor / "pytorch_model.bin")
    code, _, stderr = cli("transplant", matrix.base("llama"), donor, "-o", tmp_path / "out")
    assert code == 0, stderr


def test_tokenizer_only_method_custom_code_donor(matrix, tmp_path):
    donor = _tokenizer_dir(tmp_path / "donor")
    (donor / "config.json").write_text(json.dumps({"model_type": "acme_lm", "architectures": ["AcmeForCausalLM"],
                                                   "auto_map": {"AutoModelForCausalLM": "modeling_acme.AcmeLM"}}))
    (donor / "modeling_acme.py").write_text("raise SystemExit('custom code ran')\n")
    shutil.copyfile(matrix.base("gpt2") / "model.safetensors", donor / "model.safetensors")
    code, _, stderr = cli("transplant", matrix.base("llama"), donor, "-o", tmp_path / "out")
    assert code == 0, stderr


# 17.12: symlinked side files pointing outside an input are never read or copied

SECRET = "-----BEGIN OPENSSH PRIVATE KEY----- not really\n"


def _holds_secret(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_symlinked_donor_side_files_not_copied(matrix, tmp_path):
    secret = tmp_path / "id_rsa"
    secret.write_text(SECRET)
    donor = _tokenizer_dir(tmp_path / "donor")
    for name in ("vocab.txt", "merges.txt"):  # unused: tokenizer.json defines the tokenizer
        os.symlink(secret, donor / name)
    code, _, stderr = cli("transplant", matrix.base("llama"), donor, "-o", tmp_path / "out")
    assert code == 0, stderr
    assert _holds_secret(tmp_path / "out") == []


def test_symlinked_export_side_files_not_copied(matrix, tmp_path):
    secret = tmp_path / "id_rsa"
    secret.write_text(SECRET)
    source = _copy(matrix.base("gpt2"), tmp_path / "source")
    os.symlink(secret, source / "vocab.txt")
    code, _, stderr = cli("export", source, "-o", tmp_path / "out")
    assert code == 0 or len(error_lines(stderr)) == 1, stderr
    if code == 0:
        assert _holds_secret(tmp_path / "out") == []


# 17.13: export patch manifests: names validated, foreign bytes never printed

PASSWD = "root:x:0:0:root:/root:/bin/bash\n" * 4


def _patch(matrix, tmp_path: Path) -> Path:
    code, _, stderr = cli("export", matrix.base("gpt2"), "-o", tmp_path / "patch", "--embeddings-only")
    assert code == 0, stderr
    return tmp_path / "patch"


def _rename_patch_file(patch: Path, name: str) -> None:
    manifest_file = patch / "tokensurgeon_patch.json"
    manifest = json.loads(manifest_file.read_text())
    for entry in manifest["tensors"].values():
        entry["file"] = name
    manifest_file.write_text(json.dumps(manifest))


@pytest.mark.parametrize("where", ["absolute", "inside"])
def test_patch_manifest_names_validated(matrix, tmp_path, where):
    patch = _patch(matrix, tmp_path)
    target = tmp_path / "passwd" if where == "absolute" else patch / "notes.txt"
    target.write_text(PASSWD)
    _rename_patch_file(patch, str(target) if where == "absolute" else target.name)
    code, _, stderr = cli("export", patch, "--apply-to", matrix.base("gpt2"), "-o", tmp_path / "out")
    lines = error_lines(stderr)
    assert code == 2 and len(lines) == 1, stderr
    claimed = str(struct.unpack("<Q", PASSWD.encode()[:8])[0])
    assert claimed not in lines[0] and "root:x" not in lines[0], lines[0]
    if where == "absolute":
        assert "file name" in lines[0], lines[0]
