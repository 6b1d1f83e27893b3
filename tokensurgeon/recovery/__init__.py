"""Recovery after a transplant: distil the base model into the patched one (ALM chunk divergence) or fit the
text (LM loss), training rows, embeddings or LoRA adapters, and keep only a state that beats the input."""

from tokensurgeon.recovery.options import RecoveryOptions
from tokensurgeon.recovery.train import RecoveryResult, recover

__all__ = ["RecoveryOptions", "RecoveryResult", "recover"]
