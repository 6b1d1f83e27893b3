"""Convert the real pairs to GGUF with llama.cpp's own converter and report (issue 20, deployment).

    .venv/bin/python bench/bench_gguf.py --llama-cpp /path/to/llama.cpp \
        --model smollm2=~/.cache/tokensurgeon/models/smollm2-135m --model p2=out/smollm2-llama3 ...

For each model: the static engine checks, the converter's verdict and its last lines, and the GGUF's
tokenizer metadata (tokenizer.ggml.pre, add_bos_token). An output whose BOS post-processor hides the
donor's tokenizer from the converter is converted through a view with the BOS policy in tokenizer_config.json
(deploy.gguf.convert does it; "adapted" says so). --generate compares the first greedy tokens of the GGUF
(llama-cpp-python, when it is installed) with transformers', and the prompt's ids from both tokenizers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

PROMPT = "The capital of France is"


def gguf_metadata(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    wanted = ("tokenizer.ggml.pre", "tokenizer.ggml.model", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id",
              "tokenizer.ggml.eos_token_id")
    out = {}
    for key in wanted:
        field = reader.fields.get(key)
        if field is None:
            continue
        value = field.parts[field.data[0]]
        out[key] = bytes(value).decode("utf-8") if field.types and field.types[0].name == "STRING" else value.tolist()[0]
    return out


def first_tokens(model_dir: Path, gguf: Path, n: int = 8) -> dict:
    """Greedy continuations of PROMPT: transformers from the checkpoint, llama.cpp from the GGUF; same ids given."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from llama_cpp import Llama
    except ImportError:
        return {"skipped": "llama-cpp-python is not installed"}
    llm = Llama(model_path=str(gguf), n_ctx=256, verbose=False, seed=0)
    ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=False)
    gguf_out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        gguf_out.append(int(token))
        if len(gguf_out) == n:
            break
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        generated = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, top_k=None, top_p=None,
                                   temperature=None)
    hf_out = generated[0, len(ids):].tolist()
    agree = next((i for i, (a, b) in enumerate(zip(gguf_out, hf_out)) if a != b), min(len(gguf_out), len(hf_out)))
    return {"prompt_ids": ids, "hf_tokenizer_ids": tokenizer(PROMPT)["input_ids"], "gguf": gguf_out, "transformers": hf_out,
            "agreeing_prefix": agree, "gguf_text": tokenizer.decode(gguf_out), "transformers_text": tokenizer.decode(hf_out)}


def run_one(name: str, model: Path, llama_cpp: Path, scratch: Path, outtype: str, generate: bool) -> dict:
    from tokensurgeon.deploy import check_deploy, render_text

    outfile = scratch / f"{name}.gguf"
    report = check_deploy(model, llama_cpp=llama_cpp, outfile=outfile, outtype=outtype)
    print(f"== {name}: {model}")
    print(render_text(report), end="")
    conversion = report.conversion
    print("   converter's last lines:")
    for line in conversion.tail[-4:]:
        print("     " + line[:200])
    row = {"name": name, "model": str(model), "ok": conversion.ok, "reason": conversion.reason,
           "seconds": conversion.seconds, "static_ok": all(f.ok for f in report.findings), "tail": conversion.tail[-4:],
           "adapted": conversion.adapted}
    if conversion.ok:
        row["gguf"] = gguf_metadata(outfile)
        print(f"   GGUF: {row['gguf']}")
        if generate:
            row["first_tokens"] = first_tokens(model, outfile)
            print(f"   first tokens: {row['first_tokens']}")
        outfile.unlink()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp checkout, its converter, or an "
                        "unpacked llama-cpp-python sdist")
    parser.add_argument("--model", action="append", required=True, help="NAME=DIR (repeatable)")
    parser.add_argument("--outtype", default="f16")
    parser.add_argument("--generate", action="store_true", help="compare first greedy tokens (llama-cpp-python)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as scratch:
        for spec in args.model:
            name, _, directory = spec.partition("=")
            model = Path(directory).expanduser()
            rows.append(run_one(name, model, args.llama_cpp, Path(scratch), args.outtype, args.generate))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    sys.exit(0 if all(row["ok"] for row in rows) else 1)


if __name__ == "__main__":
    main()
