"""The weight formats a checkpoint can be read from, by name: each gives a file's tensor layout
(no data read) and one tensor's data. Everything is written as safetensors (safetensors.write_file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import pickle, safetensors
from .layout import TensorInfo


@dataclass(frozen=True)
class WeightFormat:
    name: str
    layout: Callable[[Path], tuple[dict[str, TensorInfo], dict[str, str]]]  # tensors and file metadata
    read: Callable[[TensorInfo], torch.Tensor]


FORMATS = {
    "safetensors": WeightFormat("safetensors", safetensors.read_header, safetensors.read_tensor),
    "pickle": WeightFormat("pickle", pickle.pickle_layout, pickle.read_tensor),  # only with --allow-pickle
}


def weight_format(name: str) -> WeightFormat:
    return FORMATS[name]
