"""How good a model is: bits per byte (tokenizer-independent), speculative decoding, resources, rows."""

from .bpb import ModelScores, TextScore, evaluate_models, load_for_eval, score_text

__all__ = ["ModelScores", "TextScore", "evaluate_models", "load_for_eval", "score_text"]
