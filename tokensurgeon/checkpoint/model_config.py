"""config.json and generation_config.json: which keys hold the vocabulary size and the special token
ids, where (top level, or ``text_config`` for multimodal models), and how a patched model's copies are
written. The one home of those key lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

SUBCONFIG_KEYS = ("text_config",)  # nested configs that repeat vocab_size, ids and dtype
GENERATION_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")  # what generate() reads
UNK_KEY = "unk_token_id"  # set only where the base config has one: generation configs never carry it
CONFIG_ID_KEYS = GENERATION_ID_KEYS + (UNK_KEY,)
PER_LAYER_KEY = "vocab_size_per_layer_input"  # Gemma3n: per-layer embedding tables follow the vocabulary


def read_json(path: Path) -> dict:
    """A JSON file's object, {} when the file is absent; an unreadable or corrupt one is one error line."""
    from ..errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# keys tokensurgeon reads itself before transformers does: (what the value must be, its test); null allowed
CONFIG_SHAPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "architectures": ("a list of class names", lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v)),
    "model_type": ("a string", lambda v: isinstance(v, str)),
    "auto_map": ("a JSON object", lambda v: isinstance(v, dict)),
    "vocab_size": ("a positive integer", _is_positive_int),
    PER_LAYER_KEY: ("a positive integer", _is_positive_int),
    **{key: ("a JSON object", lambda v: isinstance(v, dict)) for key in SUBCONFIG_KEYS},
}


def check_config_shapes(config: dict, where: Path) -> None:
    """Refuse, in one line naming the key, a config.json whose keys tokensurgeon reads have the wrong JSON
    type (``architectures: [[]]`` used to end in a TypeError deep inside the model-kind check)."""
    from ..errors import CheckpointError

    for section in sections(config):
        for key, (expected, valid) in CONFIG_SHAPES.items():
            value = section.get(key)
            if value is not None and not valid(value):
                raise CheckpointError(f"{where}: {key} must be {expected}, not {json.dumps(value)[:80]}")


def write_json(path: Path, data: dict) -> None:
    """The layout every config tokensurgeon writes: sorted keys, two-space indent, final newline."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def sections(config: dict) -> list[dict]:
    """The config itself and each nested sub-config (``text_config``) it has."""
    return [config] + [config[key] for key in SUBCONFIG_KEYS if isinstance(config.get(key), dict)]


def text_config(config: dict) -> dict:
    """The sub-config that holds vocab_size and token ids (``text_config`` for multimodal models)."""
    return sections(config)[-1]


def vocab_sizes(config: dict) -> list[int]:
    """Every vocab_size the config states (top level and sub-configs)."""
    return [size for size in (section.get("vocab_size") for section in sections(config)) if size is not None]


def config_token_ids(model: Path) -> dict[str, Any]:
    """Special token ids and vocab_size in a model's config.json."""
    config = read_json(Path(model) / "config.json")
    text = text_config(config)
    return {key: text.get(key, config.get(key)) for key in CONFIG_ID_KEYS + ("vocab_size",)}


def generation_token_ids(model: Path) -> dict[str, Any]:
    """The token ids generate() uses: generation_config.json over config.json."""
    ids = {key: config_token_ids(model)[key] for key in GENERATION_ID_KEYS}
    generation = read_json(Path(model) / "generation_config.json")
    return ids | {key: generation[key] for key in GENERATION_ID_KEYS if key in generation}


MULTIMODAL_ID_HINTS = ("image", "video", "vision", "audio", "boi", "eoi", "boa", "eoa")  # placeholders a processor uses


def other_id_keys(section: dict) -> list[str]:
    """Keys of a config section that hold base-vocabulary token ids beyond bos/eos/pad/unk
    (image_token_index, boi_token_index, Qwen2-VL's vision_start_token_id, sep_token_id, ...)."""
    return [key for key in section if (key.endswith("_token_id") or key.endswith("_token_index"))
            and key not in CONFIG_ID_KEYS]


def is_multimodal_id(key: str) -> bool:
    return any(hint in key for hint in MULTIMODAL_ID_HINTS)


def patch_config(config: dict, n_rows: int, token_ids: dict[str, Any],
                 other_ids: dict[str, Any] | None = None) -> dict:
    """config.json with vocab_size (and Gemma3n's vocab_size_per_layer_input) and special ids following
    the donor, in every section (text_config too); ``other_ids``: the remapped values of other id keys."""
    patched = json.loads(json.dumps(config))
    for target in sections(patched):
        if "vocab_size" in target or target is patched:
            target["vocab_size"] = n_rows
        if PER_LAYER_KEY in target:
            target[PER_LAYER_KEY] = n_rows
        for key, value in token_ids.items():
            if key in target or (target is patched and key != UNK_KEY):
                target[key] = value
        for key in other_id_keys(target):
            target[key] = (other_ids or {}).get(key)
    return patched


GENERATION_STALE_KEYS = ("forced_bos_token_id", "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens",
                         "decoder_start_token_id", "bad_words_ids", "force_words_ids", "sequence_bias",
                         "forced_decoder_ids", "begin_suppress_tokens", "sep_token_id", "no_repeat_ngram_size_ids")


def patch_generation_config(generation: dict, token_ids: dict[str, Any]) -> dict:
    """Generation settings with exactly these special token ids (nulls included, as config.json has
    them; unk left out: generate() has none); other id settings copied from the base are dropped."""
    kept = {key: value for key, value in generation.items() if key not in GENERATION_STALE_KEYS}
    return kept | {key: value for key, value in token_ids.items() if key != UNK_KEY}


def config_with_dtype(config: dict, dtype_name: str | None) -> dict:
    """config.json with its dtype field (and torch_dtype, sub-configs too) set to a torch dtype name."""
    config = json.loads(json.dumps(config))
    if dtype_name is None:
        return config
    for target in sections(config):
        if "torch_dtype" in target:
            target["torch_dtype"] = dtype_name
        if "dtype" in target or target is config:
            target["dtype"] = dtype_name
    return config
