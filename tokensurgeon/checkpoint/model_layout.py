"""What a checkpoint's model class says about its vocabulary-sized tensors, asked on the meta device
and cached per config.

Building the class means importing its modeling module (Gemma3's: ~2.4 s of a 20 s P1 transplant on
two cores) only to read names and shapes, so the answer is kept in the cache, keyed by config.json's
bytes, the saved tensor names and the transformers version. Remote-code models (auto_map) are never
cached: their code can change under the same config. A cache entry that cannot be read is rebuilt.

The model kind check (``check_model_kind``) reads transformers' auto mappings, so it runs where the layout
is built, just before: an entry is stored only after the check passed for the same config.json bytes and
transformers version, and a cache hit imports nothing from transformers (~0.7 s of a P1 transplant).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointError
from ..runtime.cache import cache_dir, store, transformers_version
from ..runtime.progress import first_line
from ..runtime.quiet import quiet_transformers

_ENTRY = "layout.json"

SUPPORTED_KINDS = ("decoder-only causal language models and image-text-to-text models with a causal text tower "
                   "(encoder-decoder and encoder-only models are not)")


def check_model_kind(config: dict, where: Path) -> None:
    """Refuse, in one line and before anything is built, model kinds a transplant does not handle."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    arch = architectures[0] if isinstance(architectures, list) and architectures else None
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) | set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values())
    if arch in causal and not config.get("is_encoder_decoder"):
        return
    encoder_only = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if config.get("is_encoder_decoder") or encoder_only:
        kind = "an encoder-decoder" if config.get("is_encoder_decoder") else "an encoder-only"
        if model_type in ("bart", "mbart", "mvp"):
            kind = "an encoder-decoder"
        raise CheckpointError(f"{where}: {kind} model (model_type {model_type!r}, {arch or 'no architectures'}) is "
                              f"not supported; supported: {SUPPORTED_KINDS}")


@dataclass(frozen=True)
class EmbeddingLayout:
    """What the model class says about the tensors that follow the vocabulary, in module names."""

    input_names: list[str]  # every alias of the input embedding weight
    output_names: list[str]  # every alias of the output head weight (the input's when tied)
    tied: bool
    hidden: int
    extras: dict[str, str]  # module name -> role of every other vocabulary-sized parameter or buffer
    modules: dict[str, tuple[str, bool]]  # saved key -> (module name, renamed by a converter)


def _model_class(config: Any, trust_remote_code: bool) -> Any:
    """The class the checkpoint names (config.architectures[0]) when transformers has it, else the Auto class."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)

    names = getattr(config, "architectures", None) or []
    known = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) | set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values())
    if names and names[0] in known and hasattr(transformers, names[0]):
        cls = getattr(transformers, names[0])
        return lambda: cls(config)
    if (config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
            and config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        return lambda: AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
    return lambda: AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _vocab_sizes(config: Any) -> set[int]:
    sizes = set()
    for part in (config, getattr(config, "text_config", None)):
        for key in ("vocab_size", "vocab_size_per_layer_input"):
            value = getattr(part, key, None) if part is not None else None
            if isinstance(value, int) and value > 0:
                sizes.add(value)
    return sizes


def _key_mapper(model: Any) -> Callable[[str], tuple[str, bool]]:
    """saved key -> (module name, whether a converter, not a plain renaming, produced it): transformers'
    own checkpoint conversion mapping (GPT-NeoX's embed_out, LLaVA's language_model.*), so saved names
    need not equal module names."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # an older transformers: saved names are module names
        return lambda key: (key, False)
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta_state = dict(model.state_dict())
    prefix = getattr(model, "base_model_prefix", None)

    def mapped(key: str) -> tuple[str, bool]:
        name, converter = rename_source_key(key, renamings, converters, prefix, meta_state)
        return name, converter is not None
    return mapped


def _build_layout(path: Path, keys: list[str], trust_remote_code: bool) -> EmbeddingLayout:
    """The model class's vocabulary-sized tensors (input and output embedding names, every alias of each,
    output bias, per-layer tables), whether input and output are tied, the embedding width the config
    implies, and how saved keys map to module names; asked on the meta device."""
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            model_config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            build = _model_class(model_config, trust_remote_code)
            with torch.device("meta"):
                model = build()
    except Exception as exc:  # config.json drives transformers' code, which fails in many types: a bad config
        raise CheckpointError(f"{path / 'config.json'}: transformers cannot build this architecture "
                              f"({first_line(exc)})") from exc
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    embed = model.get_input_embeddings().weight
    head_module = model.get_output_embeddings()
    head = head_module.weight if head_module is not None else embed
    bias = getattr(head_module, "bias", None) if head_module is not None else None
    sizes = _vocab_sizes(model_config) | {int(embed.shape[0])}
    known = set(names[id(embed)]) | set(names.get(id(head), []))
    extras: dict[str, str] = {}
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, tensor in tensors:
        if name in known or not any(dim in sizes for dim in tensor.shape):
            continue
        if bias is not None and tensor is bias:
            extras[name] = "bias"
        elif tensor.dim() == 2 and tensor.shape[0] in sizes and tensor.shape[1] not in sizes:
            extras[name] = "per_layer"
        else:
            extras[name] = "unknown"
    to_module = _key_mapper(model)
    return EmbeddingLayout(names[id(embed)], names.get(id(head), names[id(embed)]), head is embed,
                           int(embed.shape[-1]), extras, {key: to_module(key) for key in keys})


def embedding_layout(path: Path, config: dict, keys: list[str], trust_remote_code: bool) -> EmbeddingLayout:
    """The layout of the checkpoint at ``path`` (config.json already read as ``config``; ``keys``: its saved
    tensor names), from the cache when an entry exists, else built from the model class and stored; the
    model kind is checked before any build (CheckpointError for a kind a transplant does not handle)."""
    if config.get("auto_map"):
        check_model_kind(config, path)
        return _build_layout(path, keys, trust_remote_code)
    digest = hashlib.sha256()
    for part in ((path / "config.json").read_bytes(), "\n".join(sorted(keys)).encode(), transformers_version().encode()):
        digest.update(hashlib.sha256(part).digest())
    entry = cache_dir("layouts") / digest.hexdigest()
    try:
        saved = json.loads((entry / _ENTRY).read_text())
        saved["modules"] = {key: (module, bool(converted)) for key, (module, converted) in saved["modules"].items()}
        return EmbeddingLayout(**saved)
    except (OSError, ValueError, TypeError, KeyError):  # no entry yet, or one this version cannot read
        pass
    check_model_kind(config, path)
    layout = _build_layout(path, keys, trust_remote_code)
    failed = store(entry, lambda staging: (staging / _ENTRY).write_text(json.dumps(asdict(layout))))
    if failed:
        warnings.warn(failed, stacklevel=2)
    return layout
