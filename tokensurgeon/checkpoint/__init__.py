"""Checkpoint directories: weight formats, reading (config, layout, embeddings), writing, model
configs, tokenizer files and atomic output directories."""

from .formats.layout import TensorInfo
from .reader import Checkpoint, open_checkpoint, read_config, read_embeddings, read_tensor

__all__ = ["Checkpoint", "TensorInfo", "open_checkpoint", "read_config", "read_embeddings", "read_tensor"]
