"""Teacher samples from the donor's vocabulary: training text that reaches every script the new tokens cover.

A prototype for issue 21 (docs/heal.md, *Training text from the vocabulary*): each prompt is one new token of
PATCHED (a token whose bytes the base vocabulary lacks), prompts spread over Unicode scripts by the square root of
each script's count of new tokens, and the base model samples a continuation (temperature 1, seeded). No corpus
text is read, so no held-out text is tuned on. Usage:

    python bench/vocab_text.py --patched /work/bench_out/models/p2 --base ~/.cache/tokensurgeon/models/smollm2-135m \
        --prompts 320 --out vocab320.txt
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import unicodedata

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def script(token: str) -> str:
    """The Unicode script word of the token's first letter (LATIN, HANGUL, ...), OTHER where it has none."""
    return next((unicodedata.name(ch, "?").split()[0] for ch in token if ch.isalpha()), "OTHER")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patched", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--prompts", type=int, default=320)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    patched = AutoTokenizer.from_pretrained(args.patched)
    groups: dict[str, list[str]] = collections.defaultdict(list)
    with open(f"{args.patched}/provenance.jsonl", encoding="utf-8") as rows:
        for line in rows:
            row = json.loads(line)
            if row["path"] != "copy" and row["match"] != "exact":
                text = patched.decode([row["id"]])
                if text.strip() and "\ufffd" not in text:
                    groups[script(text)].append(text)
    rng = random.Random(0)
    weight = {name: len(tokens) ** 0.5 for name, tokens in groups.items()}
    total = sum(weight.values())
    prompts = [rng.choice(tokens).lstrip() for name, tokens in groups.items()
               for _ in range(max(1, round(args.prompts * weight[name] / total)))]
    rng.shuffle(prompts)
    tokenizer = AutoTokenizer.from_pretrained(args.base, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    torch.manual_seed(0)
    texts = []
    for start in range(0, len(prompts), 16):
        batch = tokenizer(prompts[start:start + 16], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=args.new_tokens, do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, pad_token_id=tokenizer.pad_token_id or 0)
        texts += tokenizer.batch_decode(out, skip_special_tokens=True)
        print(f"{len(texts)}/{len(prompts)}", flush=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n\n".join(t.strip() for t in texts) + "\n")


if __name__ == "__main__":
    main()
