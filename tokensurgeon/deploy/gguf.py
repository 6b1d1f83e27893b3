"""Run llama.cpp's own converter (``convert_hf_to_gguf.py``) on a checkpoint and say why it failed.

GGUF is how most users deploy (llama.cpp, ollama, LM Studio), so "does it convert?" is answered by
the converter itself, never by an imitation. The user points to a llama.cpp checkout, to the script,
or to an unpacked llama-cpp-python source distribution (``vendor/llama.cpp``); the converter runs in
a subprocess with this Python (it needs torch, transformers, numpy and safetensors, which tokensurgeon
has) and with the ``gguf-py`` that sits next to it, which the script puts on its own path.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TokenSurgeonError

SCRIPT = "convert_hf_to_gguf.py"
_ERROR_LINE = re.compile(r"^(\w+(?:\.\w+)*(?:Error|Exception|Exit)|NotImplementedError|AssertionError)\b.*")
_UNRECOGNISED = "BPE pre-tokenizer was not recognized"


@dataclass
class Conversion:
    ok: bool
    script: str
    model: str
    outfile: str | None
    returncode: int | None
    seconds: float
    reason: str = ""
    hint: str = ""
    tail: list[str] = field(default_factory=list)
    gguf_bytes: int | None = None
    adapted: list[str] = field(default_factory=list)  # what the converter's view changed (empty: model as is)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_converter(path: Path) -> Path:
    """The converter script from a llama.cpp checkout, the script itself, or a llama-cpp-python source tree."""
    path = Path(path).expanduser()
    candidates = [path] if path.is_file() else [path / SCRIPT, path / "vendor" / "llama.cpp" / SCRIPT]
    for candidate in candidates:
        if candidate.is_file() and candidate.name == SCRIPT:
            if not (candidate.parent / "gguf-py").is_dir():
                raise TokenSurgeonError(f"{candidate}: no gguf-py folder next to it; point to a whole llama.cpp "
                                        "checkout (the converter needs its own gguf-py)")
            return candidate
    raise TokenSurgeonError(f"{path}: no {SCRIPT} here; point to a llama.cpp checkout, the script, or an unpacked "
                            "llama-cpp-python source distribution (pip download llama-cpp-python --no-binary :all: "
                            "--no-deps)")


def convert(model: Path, converter: Path, *, outfile: Path | None = None, outtype: str = "f16",
            vocab_only: bool = False, timeout: float = 1800) -> Conversion:
    """Convert model to GGUF with llama.cpp's converter; outfile None: a temporary file, removed afterwards.

    When the converter does not recognise the tokenizer and tokenizer.json's post-processor prepends BOS (what
    transplant adds for a base trained with BOS), it runs again on a view of model with that policy stated as
    ``add_bos_token`` (bos_policy_as_config): the GGUF is the same (gguf-py reads BOS from either place), and
    model keeps the form transformers honours. ``Conversion.adapted`` says so.
    """
    script = find_converter(converter)
    model = Path(model).resolve()
    with tempfile.TemporaryDirectory(prefix="tokensurgeon-gguf-") as scratch:
        target = Path(outfile).resolve() if outfile is not None else Path(scratch) / f"{model.name}.gguf"
        conversion = _run_converter(script, model, target, outtype, vocab_only, timeout, Path(scratch))
        if not conversion.ok and _UNRECOGNISED in conversion.reason and bos_template(model):
            view = Path(scratch) / "bos-as-config" / model.name
            adapted = bos_policy_as_config(model, view)
            conversion = _run_converter(script, view, target, outtype, vocab_only, timeout, Path(scratch))
            conversion.model, conversion.adapted = str(model), adapted
            if not conversion.ok:
                conversion.hint += (" The tokenizer was also tried with its BOS policy stated as add_bos_token (the "
                                    "donor's tokenizer.json unchanged) and is still unknown: a newer llama.cpp may "
                                    "know it (convert_hf_to_gguf_update.py adds a tokenizer to the list).")
        if outfile is None:
            conversion.outfile = None
        return conversion


def _run_converter(script: Path, model: Path, target: Path, outtype: str, vocab_only: bool, timeout: float,
                   scratch: Path) -> Conversion:
    command = [sys.executable, str(script), str(model), "--outfile", str(target), "--outtype", outtype]
    if vocab_only:
        command.append("--vocab-only")
    start = time.perf_counter()
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=scratch)
    except subprocess.TimeoutExpired as exc:
        return Conversion(False, str(script), str(model), None, None, round(time.perf_counter() - start, 1),
                          f"the converter ran past {timeout:.0f} s", tail=_lines(exc.stderr)[-12:])
    seconds = round(time.perf_counter() - start, 1)
    lines = _lines(run.stdout) + _lines(run.stderr)
    ok = run.returncode == 0 and target.is_file()
    reason = "" if ok else failure_reason(lines, run.returncode)
    return Conversion(ok, str(script), str(model), str(target) if ok else None, run.returncode, seconds, reason,
                      explain(reason, model), lines[-12:], target.stat().st_size if ok else None)


def _lines(text: str | bytes | None) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [line.rstrip() for line in (text or "").splitlines() if line.strip()]


def failure_reason(lines: list[str], returncode: int | None) -> str:
    """The exception line the converter died with (the last one), else its last line; a bare AssertionError
    gets the assert statement the traceback shows above it (the converter's checks carry no message)."""
    stripped = [line.strip() for line in lines]
    errors = [i for i, line in enumerate(stripped) if _ERROR_LINE.match(line)]
    if not errors:
        return lines[-1] if lines else f"exit status {returncode} and no output"
    last = errors[-1]
    if stripped[last] == "AssertionError":
        statement = next((line for line in reversed(stripped[:last]) if line.startswith("assert ")), None)
        return f"AssertionError: {statement}" if statement else stripped[last]
    return stripped[last]


def bos_template(model: Path) -> bool:
    """Whether tokenizer.json's post-processor prepends a special token (a TemplateProcessing, maybe in a Sequence)."""
    spec_file = Path(model) / "tokenizer.json"
    if not spec_file.is_file():
        return False
    processor = json.loads(spec_file.read_text(encoding="utf-8")).get("post_processor") or {}
    processors = processor.get("processors", []) if processor.get("type") == "Sequence" else [processor]
    return any(p.get("type") == "TemplateProcessing" and "SpecialToken" in (p.get("single") or [{}])[0]
               for p in processors if isinstance(p, dict))


def explain(reason: str, model: Path) -> str:
    """What a known failure means for a tokensurgeon output, and what to do."""
    if _UNRECOGNISED in reason:
        why = ("llama.cpp recognises a BPE tokenizer by the ids AutoTokenizer.encode gives a fixed text, special "
               "tokens included; this tokenizer is not in its list.")
        if bos_template(model):
            why += (" Its tokenizer.json post-processor prepends a BOS token, which changes those ids even when the "
                    "vocabulary and pre-tokenizer are a known tokenizer's: keep the donor's tokenizer.json unchanged "
                    "and state the BOS policy as \"add_bos_token\": true in tokenizer_config.json (llama.cpp's gguf-py "
                    "reads it into tokenizer.ggml.add_bos_token).")
        return why
    if reason.startswith("ModuleNotFoundError"):
        return ("the converter needs a package this Python lacks: pip install -r "
                "requirements/requirements-convert_hf_to_gguf.txt from the llama.cpp checkout, or just the named one "
                "(usually sentencepiece or protobuf)")
    if "vocab size" in reason.lower() or "vocab_size" in reason:
        return "config.json vocab_size and the embedding rows or the tokenizer disagree; run the static checks."
    if "not supported" in reason.lower() and "Model" in reason:
        return "this llama.cpp does not know the architecture; update the checkout."
    return ""


def _without_bos_template(processor: dict | None) -> dict | None:
    """The post-processor minus a TemplateProcessing that prepends a special token (what transplant appends)."""
    if not processor:
        return None
    if processor.get("type") == "Sequence":
        kept = [p for p in processor.get("processors", []) if _without_bos_template(p) is not None]
        return None if not kept else kept[0] if len(kept) == 1 else {**processor, "processors": kept}
    if processor.get("type") == "TemplateProcessing" and "SpecialToken" in (processor.get("single") or [{}])[0]:
        return None
    return processor


def bos_policy_as_config(model: Path, dest: Path) -> list[str]:
    """A GGUF-convertible copy of model: BOS stated as ``add_bos_token`` instead of in tokenizer.json.

    tokenizer.json loses the BOS TemplateProcessing a transplant appended (so it is the donor's again and
    llama.cpp's pre-tokenizer hash is the donor's); tokenizer_config.json gets ``"add_bos_token": true``,
    which llama.cpp's gguf-py writes as tokenizer.ggml.add_bos_token (measured on P1: the converter
    then takes the output and the GGUF prepends BOS). transformers 5 ignores add_bos_token when
    tokenizer.json exists, so the copy's plain ``tokenizer(text)`` adds no BOS. Weights are symlinked,
    every other file copied. Returns notes.
    """
    model, dest = Path(model), Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    for item in model.iterdir():
        if item.is_file():
            if item.suffix == ".safetensors":
                (dest / item.name).symlink_to(item.resolve())
            else:
                shutil.copyfile(item, dest / item.name)
    spec = json.loads((dest / "tokenizer.json").read_text(encoding="utf-8"))
    spec["post_processor"] = processor = _without_bos_template(spec.get("post_processor"))
    (dest / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    settings_file = dest / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
    settings["add_bos_token"] = True
    settings_file.write_text(json.dumps(settings, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return [f"converted a view with BOS stated as \"add_bos_token\": true in tokenizer_config.json and "
            f"tokenizer.json's post-processor without it (now {processor and processor.get('type')}): llama.cpp "
            "recognises the donor's tokenizer by ids encoded without BOS; the GGUF prepends BOS "
            "(tokenizer.ggml.add_bos_token). The checkpoint keeps its post-processor, the form transformers honours"]
