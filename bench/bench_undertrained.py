"""Issue 21 item 6: P1 (Gemma3-270M <- SmolLM2-135M, omp) with and without `transplant --recompute-undertrained`,
zero-shot bits-per-byte ratios (patched / Gemma3 with its own tokenizer) on the unseen non-Latin UDHR texts.

SmolLM2's byte-level tokens for non-Latin scripts share their bytes with Gemma3's ``<0xNN>`` byte-fallback
rows, which Gemma3 barely trained; copying them is the default, computing them (omp) is the option. The
base's and the default transplant's scores are read from bench_recovery.py's results (same texts, same
bytes, same scoring); this script builds the other transplant and scores it. Usage, after bench_recovery.py:

    OMP_NUM_THREADS=1 python bench/bench_undertrained.py --work /work/bench_out --omp-k 8
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from bench_recovery import GEMMA3, SMOLLM2, unseen_texts

NON_LATIN = ("kor", "heb", "tha", "cmn_hant")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/work/bench_out")
    parser.add_argument("--omp-k", type=int, default=8)
    parser.add_argument("--eval-max-bytes", type=int, default=1500)
    args = parser.parse_args()
    from tokensurgeon.config import TransplantConfig
    from tokensurgeon.evaluation import load_for_eval, score_text
    from tokensurgeon.pipeline.transplant import transplant

    work = Path(args.work)
    out = work / "models" / "p1-recompute"
    if not (out / "report.json").is_file():
        transplant(TransplantConfig(base=GEMMA3, donor=SMOLLM2, out=out, method="omp", device="cpu",
                                    method_options={"k": args.omp_k}, recompute_undertrained=True))
    model, tokenizer = load_for_eval(out, device=torch.device("cpu"))
    texts = unseen_texts(args.eval_max_bytes)
    ours = {label: score_text(model, tokenizer, texts[label], label=label, batch_size=4).bits_per_byte
            for label in NON_LATIN}
    base, copied = (json.loads((work / "results" / f"p1:{name}.json").read_text())["bpb"]
                    for name in ("base", "untrained"))
    computed = {name: sum(json.loads(line)["path"] != "copy" for line in (work / "models" / name / "provenance.jsonl")
                          .read_text(encoding="utf-8").split("\n") if line) for name in ("p1", "p1-recompute")}
    print(f"P1 omp k={args.omp_k}, zero-shot; first {args.eval_max_bytes} bytes of each unseen UDHR text; "
          "ratio = patched / base bits per byte")
    print("| transplant | rows computed | " + " | ".join(NON_LATIN) + " | geomean |")
    print("|---" * (len(NON_LATIN) + 3) + "|")
    for label, scores, name in (("copied (default)", copied, "p1"), ("--recompute-undertrained", ours, "p1-recompute")):
        ratios = [scores[t] / base[t] for t in NON_LATIN]
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"| {label} | {computed[name]} | " + " | ".join(f"{r:.3f}" for r in ratios) + f" | {geo:.3f} |")


if __name__ == "__main__":
    main()
