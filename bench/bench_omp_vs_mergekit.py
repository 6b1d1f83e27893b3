"""Side by side on pair P1 (base Gemma3-270M <- donor SmolLM2-135M, model as donor):
tokensurgeon's OMP against mergekit-tokensurgeon's OMP, on the same machine, in one go.

Prints wall time and peak RSS of each tool's transplant (measured on its own process with wait4),
then bits per byte of the base and of both patched models on English and several UDHR languages in
different scripts, with the ratio to the base, the share of donor tokens that are new and how often
donor token boundaries agree with the base's (so the pair's floor is visible next to the method).

    python bench/bench_omp_vs_mergekit.py [--max-bytes 4000] [--k 64] [--skip-mergekit]

mergekit 0.1.5 is installed into bench/.venv-mergekit (beside torch==2.13.0) when missing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOKENSURGEON_SHARED", ROOT.parent / "shared"))
MERGEKIT_VENV = ROOT / "bench" / ".venv-mergekit"
TEXTS = ["lee_news.txt", "enwiki_head.txt", "udhr/spa.txt", "udhr/ukr.txt", "udhr/urd.txt", "udhr/cmn_hant.txt",
         "udhr/ben.txt"]


def ensure_mergekit() -> Path:
    tool = MERGEKIT_VENV / "bin" / "mergekit-tokensurgeon"
    if not tool.exists():
        subprocess.run([sys.executable, "-m", "venv", str(MERGEKIT_VENV)], check=True)
        pip = [str(MERGEKIT_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)
        subprocess.run(pip + ["mergekit==0.1.5"], check=True)
    return tool


def measured(command: list[str]) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS in GB) of that process tree."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(command)}\n{process.stderr.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024 / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-bytes", type=int, default=4000, help="bytes of each text to score")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("/tmp/tokensurgeon-bench-p1"))
    parser.add_argument("--skip-mergekit", action="store_true")
    args = parser.parse_args()

    from tokensurgeon.evaluation.bpb import evaluate_models, truncate_utf8
    from tokensurgeon.vocab.overlap import text_stats
    from tokensurgeon.vocab.pair import load_pair
    from tokensurgeon.zoo import ensure_model

    base, donor = ensure_model("gemma3-270m"), ensure_model("smollm2-135m")
    ours, theirs = args.out / "tokensurgeon-omp", args.out / "mergekit-omp"
    runs = {}
    runs["tokensurgeon"] = measured([sys.executable, "-m", "tokensurgeon", "transplant", str(base), str(donor),
                                     "-o", str(ours), "--method", "omp", "--option", f"k={args.k}", "--force",
                                     "--device", "cpu"])
    if not args.skip_mergekit:
        runs["mergekit"] = measured([str(ensure_mergekit()), str(base), str(donor), str(theirs), "-a", "omp",
                                     "-k", str(args.k), "--device", "cpu"])
    print(f"\nP1: base {base.name} <- donor {donor.name} (model), OMP k={args.k}, {os.cpu_count()} CPUs")
    print(f"{'tool':<14}{'wall s':>9}{'peak RSS GB':>13}")
    for tool, (wall, rss) in runs.items():
        print(f"{tool:<14}{wall:>9.1f}{rss:>13.2f}")

    texts = {name: truncate_utf8((SHARED / "corpora" / name).read_text(encoding="utf-8"), args.max_bytes)
             for name in TEXTS}
    models = [base, ours] + ([theirs] if "mergekit" in runs else [])
    scores = evaluate_models(models, texts, device="auto")
    pair = load_pair(base, donor)
    header = f"{'text':<18}{'base bpb':>9}{'ours':>8}{'ratio':>7}"
    header += f"{'mergekit':>10}{'ratio':>7}" if "mergekit" in runs else ""
    print(f"\nbits per byte, first {args.max_bytes} bytes of each text\n{header}{'new tok':>9}{'bound.':>8}")
    for i, name in enumerate(TEXTS):
        base_bpb = scores[0].scores[i].bits_per_byte
        line = f"{name:<18}{base_bpb:>9.4f}"
        for result in scores[1:]:
            bpb = result.scores[i].bits_per_byte
            line += f"{bpb:>{8 if result is scores[1] else 10}.4f}{bpb / base_bpb:>7.3f}"
        stats = text_stats(name, texts[name], pair.alignment, pair.base_tokenizer, pair.donor_tokenizer)
        print(f"{line}{stats.new_token_share:>9.1%}{stats.boundary_agreement:>8.1%}")


if __name__ == "__main__":
    main()
