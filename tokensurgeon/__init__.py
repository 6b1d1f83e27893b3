"""tokensurgeon: transplant a donor tokenizer onto a pretrained causal language model."""

__version__ = "0.1.0"
