"""Side by side on pair P2 (base SmolLM2-135M <- donor tokenizer Llama-3, no donor model):
tokensurgeon's focus, tokenadapt and subword-mean against the official FOCUS (PyPI deepfocus 1.0.1).

Every method learns from the same corpus (all of ../shared/corpora, as the issue asks) and is scored
on texts of that corpus, so this measures initialisation quality, not generalisation to unseen text.
Prints wall time and peak RSS of each run (its own process, measured with wait4; both build their
auxiliary vectors from scratch: fresh caches), then bits per byte of the base and of each patched
model, with the ratio to the base.

    python bench/bench_focus_vs_deepfocus.py [--max-bytes 6000] [--repeat 3] [--skip-deepfocus]

With --repeat N every run is repeated N times (each from scratch, the tools taking turns) and the median
wall time and the largest peak RSS are printed: on a shared 2-core machine single timings vary by a few
seconds.

deepfocus is installed into bench/.venv-deepfocus (beside torch==2.13.0, with fasttext-wheel in place
of the fasttext source package it names) when missing. It returns a matrix, not a checkpoint: the
script writes its rows into a copy of our subword-mean output (same tokenizer files, config, layers).
deepfocus runs with processes=1, its faster setting here (24.3 s against 25.6 s with its default, one
process per CPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOKENSURGEON_SHARED", ROOT.parent / "shared"))
VENV = ROOT / "bench" / ".venv-deepfocus"
TEXTS = ["lee_news.txt", "enwiki_head.txt", "udhr/spa.txt", "udhr/ukr.txt", "udhr/jpn.txt"]
METHODS = ["subword-mean", "focus", "tokenadapt"]

DRIVER = """
import sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer
from deepfocus import FOCUS
base, donor, corpus, out = sys.argv[1:5]
weights = load_file(base + "/model.safetensors")
embed = weights["model.embed_tokens.weight"].float()
rows = FOCUS(target_tokenizer=AutoTokenizer.from_pretrained(donor), source_tokenizer=AutoTokenizer.from_pretrained(base),
             source_embeddings=embed, target_training_data_path=corpus, processes=1, verbosity="silent")
save_file({"embed": rows.contiguous()}, out)
"""


def ensure_deepfocus() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", "import deepfocus"]).returncode != 0:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)
        # deepfocus 1.0.1 names the `fasttext` source package (needs a compiler); fasttext-wheel is the same module
        subprocess.run(pip + ["fasttext-wheel", "entmax", "fastdist", "numba", "scipy", "tqdm", "print-on-steroids",
                              "requests", "numpy", "datasets", "transformers>=5,<6"], check=True)
        subprocess.run(pip + ["--no-deps", "deepfocus==1.0.1"], check=True)
    return python


def measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS in GB) of that process tree."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(command)}\n{process.stderr.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024 / 1024


def with_rows(template: Path, rows_file: Path, out: Path) -> None:
    """A copy of the checkpoint ``template`` whose (tied) embedding is the matrix in ``rows_file``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(template, out, dirs_exist_ok=True)
    weights = load_file(template / "model.safetensors")
    name = "model.embed_tokens.weight"
    embed = weights[name].clone()
    rows = load_file(rows_file)["embed"]
    embed[:rows.shape[0]] = rows[:embed.shape[0]].to(embed.dtype)
    weights[name] = embed
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-bytes", type=int, default=6000, help="bytes of each text to score")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tokensurgeon-bench-p2"))
    parser.add_argument("--repeat", type=int, default=1, help="runs of each tool (median wall time)")
    parser.add_argument("--skip-deepfocus", action="store_true")
    args = parser.parse_args()

    from tokensurgeon.evaluation.bpb import evaluate_models, truncate_utf8
    from tokensurgeon.zoo import ensure_model

    base, donor = ensure_model("smollm2-135m"), SHARED / "tokenizers" / "llama3"
    corpus = sorted((SHARED / "corpora").rglob("*.txt"))
    fresh_cache = Path(tempfile.mkdtemp(prefix="bench-p2-cache-"))
    commands, outputs = {}, {}
    for method in METHODS:
        outputs[method] = args.out / method
        command = [sys.executable, "-m", "tokensurgeon", "transplant", str(base), str(donor), "-o",
                   str(outputs[method]), "--method", method, "--force", "--device", "cpu"]
        commands[method] = command + ([arg for path in corpus for arg in ("--corpus", str(path))]
                                      if method != "subword-mean" else [])
    if not args.skip_deepfocus:
        joined = fresh_cache / "corpus.txt"  # deepfocus takes one file
        joined.write_text("\n".join(p.read_text(encoding="utf-8") for p in corpus), encoding="utf-8")
        rows_file = fresh_cache / "deepfocus.safetensors"
        commands["deepfocus"] = [str(ensure_deepfocus()), "-c", DRIVER, str(base), str(donor), str(joined),
                                 str(rows_file)]
    # round robin, so a machine that slows down during the benchmark slows every tool alike
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for i in range(args.repeat):
        for name, command in commands.items():
            variable = "XDG_CACHE_HOME" if name == "deepfocus" else "TOKENSURGEON_CACHE"
            timings[name].append(measured(command, {variable: str(fresh_cache / f"{name}-{i}")}))
    runs = {name: (statistics.median(wall for wall, _ in results), max(rss for _, rss in results))
            for name, results in timings.items()}
    if not args.skip_deepfocus:
        outputs["deepfocus"] = args.out / "deepfocus"
        with_rows(outputs["subword-mean"], rows_file, outputs["deepfocus"])
    shutil.rmtree(fresh_cache, ignore_errors=True)

    print(f"\nP2: base {base.name} <- donor tokenizer {donor.name}, corpus {len(corpus)} files "
          f"({sum(p.stat().st_size for p in corpus) / 1e6:.2f} MB), {os.cpu_count()} CPUs")
    print(f"{'run':<14}{'wall s':>9}{'peak RSS GB':>13}" + (f"   (median of {args.repeat})" if args.repeat > 1 else ""))
    for run, (wall, rss) in runs.items():
        print(f"{run:<14}{wall:>9.1f}{rss:>13.2f}")

    texts = {name: truncate_utf8((SHARED / "corpora" / name).read_text(encoding="utf-8"), args.max_bytes)
             for name in TEXTS}
    names = list(outputs)
    scores = evaluate_models([base] + [outputs[n] for n in names], texts, device="auto")
    print(f"\nbits per byte (ratio to base), first {args.max_bytes} bytes of each text")
    print(f"{'text':<18}{'base':>8}" + "".join(f"{n:>22}" for n in names))
    for i, text in enumerate(TEXTS):
        base_bpb = scores[0].scores[i].bits_per_byte
        cells = "".join(f"{s.scores[i].bits_per_byte:>14.4f} ({s.scores[i].bits_per_byte / base_bpb:5.3f})"
                        for s in scores[1:])
        print(f"{text:<18}{base_bpb:>8.4f}{cells}")


if __name__ == "__main__":
    main()
