"""What inference engines require of a checkpoint, checked from its files alone (no model is loaded).

* Embedding rows: vLLM, TGI and llama.cpp size the vocabulary from ``config.vocab_size`` (and
  ``text_config.vocab_size``); it must equal the rows of the input embedding (and of an untied output
  head), and every id the tokenizer can produce must lie below it, or generation indexes past the matrix.
* Special ids: ``bos/eos/pad/unk_token_id`` of config.json and generation_config.json (an id or a
  list) must be ids the tokenizer has, and the tokenizer's special tokens must be in its vocabulary.
* Draft models: vLLM and llama.cpp pair a draft with its target only when the vocabularies (token to id)
  and special ids are equal; transformers' assisted generation compares ``vocab_size`` too.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight")
_HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight", "output.weight")


@dataclass(frozen=True)
class Finding:
    """One check: ok or not, the engines it matters to, and what was found."""

    check: str
    ok: bool
    message: str
    engines: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def safetensors_shapes(model: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers (8-byte length, then JSON)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(model).glob("*.safetensors")):
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        shapes.update({name: tuple(info["shape"]) for name, info in header.items() if name != "__metadata__"})
    return shapes


def _find(shapes: dict[str, tuple[int, ...]], suffixes: tuple[str, ...]) -> tuple[str, tuple[int, ...]] | None:
    for name, shape in sorted(shapes.items()):
        if name.endswith(suffixes) and len(shape) == 2:
            return name, shape
    return None


@dataclass(frozen=True)
class Vocabulary:
    """Token -> id of a tokenizer (model vocabulary plus added tokens) and its special tokens by role."""

    ids: dict[str, int]
    specials: dict[str, str]

    @property
    def max_id(self) -> int:
        return max(self.ids.values())

    @property
    def id_set(self) -> set[int]:
        return set(self.ids.values())


def read_vocabulary(model: Path) -> Vocabulary:
    """From tokenizer.json when there is one (fast, exact), else through transformers."""
    model = Path(model)
    settings = _json(model / "tokenizer_config.json")
    specials = {}
    for role in ("bos", "eos", "pad", "unk"):
        value = settings.get(f"{role}_token")
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            specials[role] = value
    spec = _json(model / "tokenizer.json")
    if spec:
        vocab = spec.get("model", {}).get("vocab", {})
        # BPE/WordPiece: a dict; Unigram: a list of [piece, score]
        ids = dict(vocab) if isinstance(vocab, dict) else {piece[0]: i for i, piece in enumerate(vocab)}
        ids.update({token["content"]: token["id"] for token in spec.get("added_tokens", [])})
        return Vocabulary(ids, specials)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return Vocabulary(dict(tokenizer.get_vocab()), specials)


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    return [v for v in value if isinstance(v, int)] if isinstance(value, list) else []


def config_vocab_sizes(config: dict[str, Any]) -> dict[str, int]:
    sizes = {"vocab_size": config.get("vocab_size")}
    if isinstance(config.get("text_config"), dict):
        sizes["text_config.vocab_size"] = config["text_config"].get("vocab_size")
    return {key: size for key, size in sizes.items() if isinstance(size, int)}


def check_model(model: Path) -> list[Finding]:
    """Every static check on one checkpoint directory."""
    model = Path(model)
    config = _json(model / "config.json")
    if not config:
        return [Finding("config", False, f"{model}/config.json is missing or empty")]
    shapes = safetensors_shapes(model)
    vocabulary = read_vocabulary(model)
    return list(_rows(config, shapes, vocabulary)) + list(_specials(model, config, vocabulary))


def _rows(config: dict[str, Any], shapes: dict[str, tuple[int, ...]], vocabulary: Vocabulary) -> Iterator[Finding]:
    engines = "vLLM, TGI, llama.cpp"
    embed, head = _find(shapes, _EMBED_SUFFIXES), _find(shapes, _HEAD_SUFFIXES)
    sizes = config_vocab_sizes(config)
    if embed is None:
        yield Finding("embedding rows", False, "no input embedding tensor found in the safetensors files", engines)
        return
    rows = embed[1][0]
    for key, size in sizes.items():
        yield Finding(f"config {key}", size == rows,
                      f"config.json {key} = {size:,}, input embedding {embed[0]} has {rows:,} rows", engines)
    if not sizes:
        yield Finding("config vocab_size", False, "config.json states no vocab_size", engines)
    if head is not None and head[1][0] != rows:
        yield Finding("output head rows", False, f"{head[0]} has {head[1][0]:,} rows, the input embedding {rows:,}",
                      engines)
    limit = min([rows] + list(sizes.values()))
    outside = sorted(token_id for token_id in vocabulary.id_set if token_id >= limit)
    yield Finding("token ids below vocab_size", not outside,
                  f"the tokenizer's largest id is {vocabulary.max_id:,}, vocab_size {limit:,}" +
                  (f"; {len(outside):,} ids at or above it (first: {outside[:3]})" if outside else ""), engines)


def _specials(model: Path, config: dict[str, Any], vocabulary: Vocabulary) -> Iterator[Finding]:
    ids = vocabulary.id_set
    sources = {"config.json": config, "generation_config.json": _json(model / "generation_config.json")}
    if isinstance(config.get("text_config"), dict):
        sources["config.json text_config"] = config["text_config"]
    bad = []
    for where, source in sources.items():
        for key in ID_KEYS:
            bad += [f"{where} {key} = {token_id}" for token_id in _ids(source.get(key)) if token_id not in ids]
    yield Finding("special ids in the vocabulary", not bad,
                  "; ".join(bad) + " (not an id of the tokenizer)" if bad
                  else "every bos/eos/pad/unk id of config.json and generation_config.json is a tokenizer id",
                  "every engine")
    missing = [f"{role} {token!r}" for role, token in vocabulary.specials.items() if token not in vocabulary.ids]
    yield Finding("special tokens in the vocabulary", not missing,
                  "tokenizer_config.json names " + ", ".join(missing) + " but the vocabulary lacks them" if missing
                  else "every special token of tokenizer_config.json is in the vocabulary", "every engine")


def check_draft(draft: Path, target: Path) -> list[Finding]:
    """A draft must speak its target's vocabulary: same token -> id map, same special ids, same vocab_size."""
    engines = "vLLM, llama.cpp, transformers assisted generation"
    mine, theirs = read_vocabulary(draft), read_vocabulary(target)
    differ = sorted(set(mine.ids.items()) ^ set(theirs.ids.items()), key=lambda kv: kv[1])
    findings = [Finding("draft vocabulary equals target's", not differ,
                        f"{len(mine.ids):,} and {len(theirs.ids):,} tokens" +
                        (f"; {len(differ):,} (token, id) pairs differ, first {differ[:3]}" if differ
                         else ", identical"),
                        engines)]
    draft_config, target_config = _json(Path(draft) / "config.json"), _json(Path(target) / "config.json")
    for key in ID_KEYS:
        a, b = draft_config.get(key), target_config.get(key)
        if a != b and b is not None:
            findings.append(Finding(f"draft {key}", False, f"draft {a}, target {b}", engines))
    sizes = config_vocab_sizes(draft_config).get("vocab_size"), config_vocab_sizes(target_config).get("vocab_size")
    findings.append(Finding("draft vocab_size equals target's", sizes[0] == sizes[1],
                            f"draft {sizes[0]}, target {sizes[1]}", "transformers assisted generation"))
    return findings
