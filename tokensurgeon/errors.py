"""Errors a user can cause and fix; the CLI prints them as one line and exits with code 2.

Anything that is not a TokenSurgeonError is a bug and keeps its traceback.
"""

from __future__ import annotations


class TokenSurgeonError(Exception):
    """A user-facing error: say what is wrong, where, and how to fix it."""


class CheckpointError(TokenSurgeonError):
    """A checkpoint directory is missing, incomplete or malformed."""


class TokenizerError(TokenSurgeonError):
    """A tokenizer cannot be loaded or understood."""


class MethodError(TokenSurgeonError):
    """An initialisation method cannot run with the inputs it was given."""


class NoWeightsError(CheckpointError):
    """A directory has no weight files at all (a tokenizer beside a config.json, say)."""
