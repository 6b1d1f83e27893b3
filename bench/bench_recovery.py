"""Recovery benchmark (issue 21): lm+rows (yesterday's heal), lm+lora and distill+lora at equal steps on P2 and P1.

P2 = SmolLM2-135M <- Llama-3 tokenizer (subword-mean); P1 = Gemma3-270M <- SmolLM2-135M (omp). Training text:
enwiki_head plus four UDHR languages (the last 10% of each held out for the guard); evaluation on files never
trained on at all: lee_news and other UDHR languages. Printed per config: bits-per-byte ratio (patched / base
with its own tokenizer) per unseen text and their geometric mean, behaviour retention (greedy continuations
of 50 prompts vs the base model's own: mean share of identical leading bytes), seconds per step, peak RSS.

Each config runs in its own process so its peak RSS is its own. Usage:

    python bench/bench_recovery.py --patched P2_DIR --base SMOLLM2_DIR --steps 20 [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
TRAIN = ("enwiki_head.txt", "udhr/spa.txt", "udhr/ukr.txt", "udhr/jpn.txt", "udhr/ben.txt")
UNSEEN = ("lee_news.txt", "udhr/ita.txt", "udhr/pol.txt", "udhr/tur.txt", "udhr/vie.txt", "udhr/kor.txt",
          "udhr/heb.txt", "udhr/tha.txt", "udhr/cmn_hant.txt", "udhr/fin.txt")
CONFIGS = {"lm+rows": ("lm", "rows"), "lm+lora": ("lm", "lora"), "distill+lora": ("distill", "lora")}
TRAIN_BYTES = 60_000  # of enwiki_head: the UDHR files are ~12-26 KB each
PROMPT_BYTES, COMPARE_BYTES = 80, 16


def read(name: str, limit: int | None = None) -> str:
    text = (CORPORA / name).read_text(encoding="utf-8")
    return text[:limit] if limit else text


def prompts(n: int) -> list[str]:
    """n prompts from unseen text: lee_news sentences, and UDHR lines in two unseen languages."""
    news = [s.strip() for s in read("lee_news.txt")[100_000:].split(". ") if len(s.strip()) > PROMPT_BYTES]
    udhr = [line.strip() for name in ("udhr/ita.txt", "udhr/tur.txt")
            for line in read(name).split("\n") if len(line.strip()) > PROMPT_BYTES]
    chosen = news[:n - n // 5] + udhr[:n // 5]
    return [p.encode("utf-8")[:PROMPT_BYTES].decode("utf-8", errors="ignore").rsplit(" ", 1)[0] for p in chosen]


def continuations(model, tokenizer, texts: list[str], new_tokens: int) -> list[str]:
    """Greedy continuations, BOS-prefixed as in evaluation, one prompt at a time with a KV cache.

    A hand-written loop rather than model.generate: no padding to get wrong, and nothing looked up online.
    """
    from tokensurgeon.evaluation.bpb import context_prefix

    prefix, device, out = context_prefix(tokenizer), next(model.parameters()).device, []
    model.eval()
    for text in texts:
        ids = torch.tensor([prefix + tokenizer(text, add_special_tokens=False)["input_ids"]], device=device)
        past, generated = None, []
        with torch.no_grad():
            for _ in range(new_tokens):
                output = model(input_ids=ids, past_key_values=past, use_cache=True)
                past, ids = output.past_key_values, output.logits[:, -1:].argmax(-1)
                generated.append(int(ids))
        out.append(tokenizer.decode(generated, skip_special_tokens=True))
    return out


def retention(ours: list[str], base: list[str]) -> float:
    """Mean share of the base continuation's first COMPARE_BYTES bytes that ours repeats exactly from the start."""
    shares = []
    for a, b in zip(ours, base):
        a, b = a.encode("utf-8")[:COMPARE_BYTES], b.encode("utf-8")[:COMPARE_BYTES]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        shares.append(same / max(len(b), 1))
    return sum(shares) / len(shares)


def split(text: str, fraction: float) -> tuple[str, str]:
    """(training part, held-out part): the last fraction of the UTF-8 bytes, cut between characters."""
    data = text.encode("utf-8")
    train = data[:int(len(data) * (1 - fraction))].decode("utf-8", errors="ignore")
    return train, text[len(train):]


def unseen_texts(max_bytes: int) -> dict[str, str]:
    return {Path(n).stem: read(n).encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore") for n in UNSEEN}


def run_base(args) -> dict:
    from tokensurgeon.evaluation import load_for_eval, score_text

    model, tokenizer = load_for_eval(args.base, device=torch.device("cpu"))
    scores = {label: score_text(model, tokenizer, text, label=label, batch_size=4).bits_per_byte
              for label, text in unseen_texts(args.eval_max_bytes).items()}
    return {"bpb": scores, "continuations": continuations(model, tokenizer, prompts(args.prompts), args.new_tokens)}


def run_config(args, name: str, base: dict) -> dict:
    from tokensurgeon.recovery.train import RecoveryOptions, recover

    objective, train = CONFIGS[name]
    texts = {Path(n).stem: read(n, TRAIN_BYTES if n == "enwiki_head.txt" else None) for n in TRAIN}
    splits = {label: split(text, 0.1) for label, text in texts.items()}
    options = RecoveryOptions(objective=objective, train=train, steps=args.steps, eval_every=args.eval_every,
                              patience=args.steps, batch_size=args.batch_size, context=args.context,
                              eval_max_bytes=args.eval_max_bytes, lm_mix=args.lm_mix)
    clock = time.perf_counter()
    model, result = recover(Path(args.patched), {k: v[0] for k, v in splits.items()},
                            {k: v[1] for k, v in splits.items()}, options, teacher=Path(args.base),
                            unseen=unseen_texts(args.eval_max_bytes), device="cpu")
    wall = time.perf_counter() - clock
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.patched)
    ours = continuations(model, tokenizer, prompts(args.prompts), args.new_tokens)
    return {"config": name, "steps": result.steps_run, "best_step": result.best_step, "improved": result.improved,
            "before": {r["text"]: r["before_bpb"] for r in result.unseen},
            "after": {r["text"]: r["after_bpb"] for r in result.unseen},
            "held_out": result.held_out, "history": result.history,
            "retention": retention(ours, base["continuations"]),
            "seconds_per_step": result.seconds_per_step, "tokens_per_second": result.tokens_per_second,
            "wall_seconds": wall, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def untrained(args, base: dict) -> dict:
    from tokensurgeon.evaluation import load_for_eval, score_text

    model, tokenizer = load_for_eval(Path(args.patched), device=torch.device("cpu"))
    scores = {label: score_text(model, tokenizer, text, label=label, batch_size=4).bits_per_byte
              for label, text in unseen_texts(args.eval_max_bytes).items()}
    ours = continuations(model, tokenizer, prompts(args.prompts), args.new_tokens)
    return {"config": "untrained", "after": scores, "retention": retention(ours, base["continuations"])}


def table(base: dict, rows: list[dict]) -> str:
    labels = list(base["bpb"])
    lines = ["| config | " + " | ".join(labels) + " | geomean | retention | s/step | tok/s | peak RSS GB | best step |",
             "|---" * (len(labels) + 7) + "|"]
    for row in rows:
        ratios = [row["after"][label] / base["bpb"][label] for label in labels]
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        speed = (f"{row['seconds_per_step']:.1f} | {row['tokens_per_second']:.0f} | {row['peak_rss_gb']:.1f} | "
                 f"{row['best_step']}/{row['steps']}") if "steps" in row else "- | - | - | -"
        lines.append(f"| {row['config']} | " + " | ".join(f"{r:.3f}" for r in ratios)
                     + f" | {geo:.3f} | {row['retention']:.3f} | {speed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patched", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--eval-max-bytes", type=int, default=1500)
    parser.add_argument("--lm-mix", type=float, default=0.0)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one config, JSON out
    args = parser.parse_args()
    torch.manual_seed(0)
    work = Path(args.out or "bench_recovery.json")
    if args.one:
        base = json.loads(work.with_suffix(".base.json").read_text())
        result = untrained(args, base) if args.one == "untrained" else run_config(args, args.one, base)
        print(json.dumps(result))
        return
    clock = time.perf_counter()
    base = run_base(args)
    work.with_suffix(".base.json").write_text(json.dumps(base))
    names = ["untrained", *args.configs.split(",")]  # children in parallel: one process (and peak RSS) each
    children = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--one", name, "--out", str(work)],
                                 stdout=subprocess.PIPE, text=True) for name in names]
    rows = []
    for name, child in zip(names, children):
        stdout, _ = child.communicate()
        if child.returncode:
            raise SystemExit(f"{name} failed (exit {child.returncode})")
        rows.append(json.loads(stdout.strip().splitlines()[-1]))
        print(f"[{name} done, {time.perf_counter() - clock:.0f} s]", file=sys.stderr, flush=True)
    work.write_text(json.dumps({"base": base, "rows": rows}, indent=1))
    print(f"patched {args.patched}; base {args.base}; {args.steps} steps of {args.batch_size} x {args.context} "
          f"tokens, eval every {args.eval_every}; unseen texts: first {args.eval_max_bytes} bytes; "
          f"{args.prompts} prompts x {args.new_tokens} greedy tokens, first {COMPARE_BYTES} bytes compared")
    print(table(base, rows))
    print(f"total wall {time.perf_counter() - clock:.0f} s")


if __name__ == "__main__":
    main()
