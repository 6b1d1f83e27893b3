"""Tiny random-weight checkpoints of many transformers architectures, for the architecture matrix.

Every model is built from its transformers config class with ~64-wide, 2-layer settings, saved with
``save_pretrained`` and given a real tokenizer from ../shared/tokenizers (its vocabulary sets the
embedding rows). Nothing here touches tokensurgeon: the matrix checks the tool against what
transformers itself writes and loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

HIDDEN, LAYERS, HEADS, KV_HEADS, INTER = 64, 2, 4, 2, 128


@dataclass(frozen=True)
class Arch:
    """One matrix entry: how to build the base, which tokenizer it carries, which donor replaces it."""

    name: str
    build: Callable[[int, dict], tuple[Any, type]]  # (vocab, special ids) -> (config, model class)
    tokenizer: str  # base tokenizer (a folder of ../shared/tokenizers)
    donor: str  # donor tokenizer, a different one
    auto: str = "AutoModelForCausalLM"  # the Auto class the base loads with
    shard_size: str | None = None
    extra_tokens: tuple[str, ...] = ()  # special tokens added to the base tokenizer (image placeholders) and,
    # since the config's placeholder ids must map to a donor token, to the donor tokenizer too
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


def _std(ids: dict, **extra: Any) -> dict:
    """The settings every decoder shares: tiny sizes plus the base tokenizer's special ids."""
    return dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                num_key_value_heads=KV_HEADS, intermediate_size=INTER, max_position_embeddings=256, **ids) | extra


def _cfg(cls_name: str, model_name: str, **fixed: Any) -> Callable[[int, dict], tuple[Any, type]]:
    """A builder for the common decoder shape: Config(vocab_size, tiny sizes, ids, **fixed)."""
    def build(vocab: int, ids: dict) -> tuple[Any, type]:
        import transformers

        config = getattr(transformers, cls_name)(**_std(ids, vocab_size=vocab, **fixed))
        return config, getattr(transformers, model_name)
    return build


def _plain(cls_name: str, model_name: str, **kwargs: Any) -> Callable[[int, dict], tuple[Any, type]]:
    """A builder for configs with their own size names: Config(vocab_size, ids, **kwargs)."""
    def build(vocab: int, ids: dict) -> tuple[Any, type]:
        import transformers

        config = getattr(transformers, cls_name)(vocab_size=vocab, **ids, **kwargs)
        return config, getattr(transformers, model_name)
    return build


def _gemma3_text(vocab: int, ids: dict) -> dict:
    return _std(ids, vocab_size=vocab, head_dim=16, sliding_window=32, layer_types=["sliding_attention",
                                                                                      "full_attention"])


def _siglip() -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                patch_size=14)


def _gemma3_vision(vocab: int, ids: dict) -> tuple[Any, type]:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = _gemma3_text(vocab, ids)
    config = Gemma3Config(text_config=text, vision_config=_siglip(), mm_tokens_per_image=4,
                          image_token_index=vocab - 1, boi_token_index=vocab - 2, eoi_token_index=vocab - 3,
                          tie_word_embeddings=True, **ids)
    return config, Gemma3ForConditionalGeneration


def _gemma3n(vocab: int, ids: dict) -> tuple[Any, type]:
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    config = Gemma3nTextConfig(**_std(ids, vocab_size=vocab, head_dim=16, sliding_window=32,
                                      layer_types=["sliding_attention", "full_attention"],
                                      intermediate_size=[INTER] * LAYERS, vocab_size_per_layer_input=vocab,
                                      hidden_size_per_layer_input=8, num_kv_shared_layers=0,
                                      altup_num_inputs=2, laurel_rank=4,
                                      activation_sparsity_pattern=[0.0] * LAYERS))
    return config, Gemma3nForCausalLM


def _llava(vocab: int, ids: dict) -> tuple[Any, type]:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    text = dict(model_type="llama", **_std(ids, vocab_size=vocab))
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32)
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_index=vocab - 1,
                         vision_feature_layer=-1, **ids)
    return config, LlavaForConditionalGeneration


QWEN2_VL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
GEMMA3_IMAGE_TOKENS = ("<end_of_image>", "<start_of_image>", "<image_soft_token>")  # ids vocab-3, -2, -1


def _qwen2_vl(vocab: int, ids: dict) -> tuple[Any, type]:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = _std(ids, vocab_size=vocab, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                tie_word_embeddings=True)
    vision = dict(depth=1, embed_dim=32, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_chans=3)
    first = vocab - len(QWEN2_VL_TOKENS)  # the placeholders, added last to the base tokenizer
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                           vision_start_token_id=first, vision_end_token_id=first + 1, image_token_id=first + 2,
                           video_token_id=first + 3, **ids)
    return config, Qwen2VLForConditionalGeneration


def _mamba(vocab: int, ids: dict) -> tuple[Any, type]:
    from transformers import MambaConfig, MambaForCausalLM

    return MambaConfig(vocab_size=vocab, hidden_size=HIDDEN, state_size=8, num_hidden_layers=LAYERS,
                       expand=2, conv_kernel=4, **ids), MambaForCausalLM


ARCHS: dict[str, Arch] = {a.name: a for a in [
    Arch("llama", _cfg("LlamaConfig", "LlamaForCausalLM", tie_word_embeddings=False), "llama2", "gpt2",
         tags=("untied",)),
    Arch("llama-sharded", _cfg("LlamaConfig", "LlamaForCausalLM", tie_word_embeddings=True), "llama2",
         "deepseek-llm", shard_size="1MB", tags=("sharded",)),
    Arch("mistral", _cfg("MistralConfig", "MistralForCausalLM", tie_word_embeddings=False), "mistral-v1", "gpt2"),
    Arch("qwen2", _cfg("Qwen2Config", "Qwen2ForCausalLM", tie_word_embeddings=True), "qwen2", "llama2"),
    Arch("qwen3", _cfg("Qwen3Config", "Qwen3ForCausalLM", tie_word_embeddings=True, head_dim=16), "gpt2",
         "llama2"),
    Arch("qwen2_moe", _cfg("Qwen2MoeConfig", "Qwen2MoeForCausalLM", num_experts=4, num_experts_per_tok=2,
                           moe_intermediate_size=32, shared_expert_intermediate_size=32), "llama2", "gpt2"),
    Arch("qwen3_moe", _cfg("Qwen3MoeConfig", "Qwen3MoeForCausalLM", num_experts=4, num_experts_per_tok=2,
                           moe_intermediate_size=32, head_dim=16), "llama2", "gpt2"),
    Arch("mixtral", _cfg("MixtralConfig", "MixtralForCausalLM", num_local_experts=4, num_experts_per_tok=2),
         "mistral-v1", "gpt2"),
    Arch("phi", _cfg("PhiConfig", "PhiForCausalLM", num_key_value_heads=HEADS), "gpt2", "llama2",
         notes="phi-1/2: untied with lm_head.bias"),
    Arch("phi3", _cfg("Phi3Config", "Phi3ForCausalLM", tie_word_embeddings=False), "phi3", "gpt2"),
    Arch("gemma", _cfg("GemmaConfig", "GemmaForCausalLM", head_dim=16), "llama2", "gpt2"),
    Arch("gemma2", _cfg("Gemma2Config", "Gemma2ForCausalLM", head_dim=16, sliding_window=32), "llama2", "gpt2"),
    Arch("gemma3_text", lambda v, ids: (__import__("transformers").Gemma3TextConfig(**_gemma3_text(v, ids)),
                                        __import__("transformers").Gemma3ForCausalLM), "llama2", "gpt2"),
    Arch("gemma3_vision", _gemma3_vision, "llama2", "mistral-v1", auto="AutoModelForImageTextToText",
         extra_tokens=GEMMA3_IMAGE_TOKENS, tags=("multimodal",)),
    Arch("gemma3n", _gemma3n, "llama2", "gpt2", notes="per-layer embeddings follow the vocabulary"),
    Arch("gpt2", _plain("GPT2Config", "GPT2LMHeadModel", n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                        n_positions=256), "gpt2", "llama2"),
    Arch("gpt_neox", _cfg("GPTNeoXConfig", "GPTNeoXForCausalLM", tie_word_embeddings=False), "gpt2", "llama2",
         notes="output head stored as embed_out"),
    Arch("gptj", _plain("GPTJConfig", "GPTJForCausalLM", n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                        rotary_dim=8, n_positions=256), "gpt2", "llama2", notes="lm_head.bias"),
    Arch("codegen", _plain("CodeGenConfig", "CodeGenForCausalLM", n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                           rotary_dim=8, n_positions=256, n_ctx=256), "gpt2", "llama2", notes="lm_head.bias"),
    Arch("falcon", _plain("FalconConfig", "FalconForCausalLM", hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS), "gpt2", "llama2"),
    Arch("olmo", _cfg("OlmoConfig", "OlmoForCausalLM"), "gpt2", "llama2"),
    Arch("olmo2", _cfg("Olmo2Config", "Olmo2ForCausalLM"), "gpt2", "llama2"),
    Arch("stablelm", _cfg("StableLmConfig", "StableLmForCausalLM"), "gpt2", "llama2"),
    Arch("cohere", _cfg("CohereConfig", "CohereForCausalLM"), "llama2", "gpt2"),
    Arch("granite", _cfg("GraniteConfig", "GraniteForCausalLM"), "gpt2", "llama2"),
    Arch("mamba", _mamba, "gpt2", "llama2"),
    Arch("llava", _llava, "llama2", "mistral-v1", auto="AutoModelForImageTextToText", extra_tokens=("<image>",),
         tags=("multimodal",)),
    Arch("qwen2_vl", _qwen2_vl, "llama2", "mistral-v1", auto="AutoModelForImageTextToText",
         extra_tokens=QWEN2_VL_TOKENS, tags=("multimodal",)),
    Arch("starcoder2", _cfg("Starcoder2Config", "Starcoder2ForCausalLM"), "gpt2", "llama2"),
    Arch("bloom", _plain("BloomConfig", "BloomForCausalLM", hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS),
         "gpt2", "llama2"),
    Arch("opt", _plain("OPTConfig", "OPTForCausalLM", hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, ffn_dim=INTER, word_embed_proj_dim=HIDDEN,
                       max_position_embeddings=256), "gpt2", "llama2"),
    Arch("gpt_neo", _plain("GPTNeoConfig", "GPTNeoForCausalLM", hidden_size=HIDDEN, num_layers=LAYERS,
                           num_heads=HEADS, attention_types=[[["global", "local"], 1]], window_size=32,
                           max_position_embeddings=256), "gpt2", "llama2"),
    Arch("smollm3", _cfg("SmolLM3Config", "SmolLM3ForCausalLM"), "llama3", "mistral-v1"),
    Arch("glm4", _cfg("Glm4Config", "Glm4ForCausalLM", head_dim=16), "llama2", "phi3"),
]}


def donor_with_extras(arch: Arch, out: Path, tokenizers: Path) -> Path:
    """The donor tokenizer, with the base's extra special tokens (image placeholders) when it has some."""
    from transformers import AutoTokenizer

    if not arch.extra_tokens:
        return tokenizers / arch.donor
    tokenizer = AutoTokenizer.from_pretrained(tokenizers / arch.donor)
    tokenizer.add_special_tokens({"additional_special_tokens": list(arch.extra_tokens)})
    tokenizer.save_pretrained(out)
    return out


def special_ids(tokenizer: Any) -> dict:
    """bos/eos/pad ids for a config, from the tokenizer's roles (pad falls back to eos, as real configs do)."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos, "pad_token_id": pad}


def build_arch(arch: Arch, out: Path, tokenizers: Path, seed: int = 0) -> Path:
    """Save the tiny random checkpoint of ``arch`` with its real tokenizer into ``out``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizers / arch.tokenizer)
    if arch.extra_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(arch.extra_tokens)})
    vocab = len(tokenizer)
    config, model_class = arch.build(vocab, special_ids(tokenizer))
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.save_pretrained(out, **({"max_shard_size": arch.shard_size} if arch.shard_size else {}))
    tokenizer.save_pretrained(out)
    return out


def config_vocab_sizes(config: dict) -> set[int]:
    """Every vocab-like size a config.json declares (text sub-config and per-layer inputs included)."""
    sizes = set()
    for part in (config, config.get("text_config") or {}):
        for key in ("vocab_size", "vocab_size_per_layer_input"):
            if isinstance(part.get(key), int):
                sizes.add(part[key])
    return sizes


def vocab_sized_parameters(model: torch.nn.Module, vocab: int) -> dict[str, tuple[int, ...]]:
    """name -> shape of every parameter or buffer with a dimension equal to ``vocab`` (embeddings, heads,
    biases, per-layer tables)."""
    found = {}
    for name, tensor in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers()):
        if vocab in tuple(tensor.shape):
            found[name] = tuple(tensor.shape)
    return found


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
