"""Fingerprint transplant outputs (sha256 of model*.safetensors and provenance.jsonl) for a fixed set
of runs, so a refactor can show byte-identical results before and after.

Usage: python bench/hash_outputs.py [--out FILE]   (prints one line per run and file; CPU only)

Runs: P1 = gemma3-270m base with the full SmolLM2-135M model as donor, method omp (k=8);
P2 = SmolLM2-135M base with the llama3 tokenizer, methods subword-mean, focus, tokenadapt (fixed
corpus) and hypernet (few steps). Real models come from ``python -m tokensurgeon.zoo``.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpora" / "enwiki_head.txt"
LLAMA3 = SHARED / "tokenizers" / "llama3"


def zoo_path(name: str) -> Path:
    done = subprocess.run([sys.executable, "-m", "tokensurgeon.zoo", name], check=True, capture_output=True,
                          text=True, cwd=ROOT)
    return Path(done.stdout.split()[-1])


def runs(only: list[str] | None) -> dict[str, list[str]]:
    wanted = lambda name: not only or name in only  # noqa: E731
    smollm2 = zoo_path("smollm2-135m")
    gemma3 = zoo_path("gemma3-270m") if wanted("P1-omp") else None
    corpus = ["--corpus", str(CORPUS)]
    all_runs = {
        "P1-omp": [str(gemma3), str(smollm2), "--method", "omp", "--option", "k=8"],
        "P2-subword-mean": [str(smollm2), str(LLAMA3), "--method", "subword-mean"],
        "P2-focus": [str(smollm2), str(LLAMA3), "--method", "focus", *corpus],
        "P2-tokenadapt": [str(smollm2), str(LLAMA3), "--method", "tokenadapt", *corpus],
        "P2-hypernet": [str(smollm2), str(LLAMA3), "--method", "hypernet", "--option", "steps=20"],
    }
    return {name: argv for name, argv in all_runs.items() if wanted(name)}


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the lines to this file")
    parser.add_argument("--only", nargs="*", help="run names to run (default: all)")
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in runs(args.only).items():
            out = Path(tmp) / name
            subprocess.run([sys.executable, "-m", "tokensurgeon", "transplant", *argv, "-o", str(out),
                            "--device", "cpu"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            for file in sorted(out.glob("model*.safetensors")) + [out / "provenance.jsonl"]:
                line = f"{name}\t{file.name}\t{digest(file)}"
                print(line, flush=True)
                lines.append(line)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
