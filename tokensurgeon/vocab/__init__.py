"""Vocabularies as bytes: tokenizer loading, canonical bytes, alignment of two vocabularies, statistics."""

from .bytes import canonical_bytes, detect_scheme, gpt2_byte_decoder
from .tokenizer import Vocabulary, build_vocabulary, load_tokenizer, tokenizer_spec

__all__ = ["Vocabulary", "build_vocabulary", "canonical_bytes", "detect_scheme", "gpt2_byte_decoder",
           "load_tokenizer", "tokenizer_spec"]
