"""Scale benchmark: does peak memory follow the embeddings, not the checkpoint?

Writes synthetic Llama checkpoints with real-size embeddings and real-width layers (random bf16
weights, streamed to disk a block at a time, never more than one block in memory), then times
`python -m tokensurgeon transplant` (donor tokenizer, subword-mean) and `export` on them in
subprocesses, measuring each one's peak RSS with os.wait4 and counting the bytes it wrote.

Cases:
    mid    vocab 128,257 x hidden 4,096 (Llama-3-8B embeddings), 2 layers of 8B width
    large  vocab 128,257 x hidden 8,192 (Llama-3-70B embeddings, untied head), as many 70B-width
           layers as the free disk allows (at most --max-layers)

The vocabulary is the Llama-3 tokenizer in /work/shared/tokenizers/llama3: 128,256 tokens plus the
<|endoftext|> its GGUF conversion adds, so 128,257 rows (one more than the real checkpoints).

    python bench/bench_scale.py [--cases mid,large] [--donor qwen2] [--max-layers 4] [--keep]

Everything is written under --workdir and removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOKENSURGEON_SHARED", ROOT.parent / "shared"))
TOKENIZERS = SHARED / "tokenizers"
GB = 10**9
BLOCK_ELEMENTS = 16 * 2**20  # random values generated per block (64 MB of float32)


@dataclass(frozen=True)
class Shape:
    """A Llama-architecture checkpoint shape."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int
    rows: int
    tied: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes in the order transformers saves a LlamaForCausalLM."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.rows, h))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            specs += [(p + "input_layernorm.weight", (h,)),
                      (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                      (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                      (p + "post_attention_layernorm.weight", (h,)),
                      (p + "mlp.gate_proj.weight", (self.intermediate, h)),
                      (p + "mlp.up_proj.weight", (self.intermediate, h)),
                      (p + "mlp.down_proj.weight", (h, self.intermediate))]
        specs.append(("model.norm.weight", (h,)))
        if not self.tied:
            specs.append(("lm_head.weight", (self.rows, h)))
        return specs

    def layer_bytes(self) -> int:
        one = [s for n, s in self.tensors() if n.startswith("model.layers.0.")]
        return sum(_numel(s) for s in one) * 2

    def embedding_bytes(self, rows: int | None = None) -> int:
        return (rows or self.rows) * self.hidden * 2 * (1 if self.tied else 2)

    def config(self) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim, "num_hidden_layers": self.layers,
            "vocab_size": self.rows, "tie_word_embeddings": self.tied, "hidden_act": "silu",
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "attention_bias": False, "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": 128001,
            "dtype": "bfloat16",
        }


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _random_blocks(name: str, shape: tuple[int, ...], generator: torch.Generator):
    """A tensor's bf16 bytes, one block of random values at a time (norm weights are ones)."""
    total = _numel(shape)
    for start in range(0, total, BLOCK_ELEMENTS):
        count = min(BLOCK_ELEMENTS, total - start)
        if name.endswith("norm.weight"):
            block = torch.ones(count, dtype=torch.bfloat16)
        else:
            block = (torch.randn(count, generator=generator) * 0.02).to(torch.bfloat16)
        yield block.view(torch.uint8).numpy().data


def write_checkpoint(out: Path, shape: Shape, shard_bytes: int = 5 * GB, seed: int = 0) -> int:
    """Write a random bf16 checkpoint as transformers would shard it; returns its size in bytes."""
    out.mkdir(parents=True)
    specs = shape.tensors()
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in specs:
        nbytes = _numel(dims) * 2
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, dims))
        size += nbytes
    names = ([f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
             if len(shards) > 1 else ["model.safetensors"])
    generator = torch.Generator().manual_seed(seed)
    weight_map = {}
    for shard, file_name in zip(shards, names):
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dims in shard:
            header[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + _numel(dims) * 2]}
            offset += _numel(dims) * 2
            weight_map[name] = file_name
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        with open(out / file_name, "wb") as handle:
            handle.write(struct.pack("<Q", len(encoded)) + encoded)
            for name, dims in shard:
                for block in _random_blocks(name, dims, generator):
                    handle.write(block)
    total = sum(_numel(dims) * 2 for _, dims in specs)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 128000, "eos_token_id": 128001}) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZERS / "llama3" / name, out / name)
    return dir_bytes(out)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def measured(command: list[str], log: Path) -> dict:
    """Run a command in its own process; wall seconds and peak RSS (bytes) from os.wait4."""
    start = time.perf_counter()
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        sys.exit(f"failed ({process.returncode}): {' '.join(command)}\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "peak_rss": usage.ru_maxrss * 1024}  # ru_maxrss is in KiB on Linux


def tokensurgeon(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokensurgeon", *args]


def choose_layers(workdir: Path, shape: Shape, out_rows: int, max_layers: int, share: float) -> int:
    """As many layers as fit in a share of the free disk: base + transplant output + export, at once."""
    free = shutil.disk_usage(workdir).free
    for layers in range(max_layers, 0, -1):
        need = (shape.embedding_bytes() + shape.embedding_bytes(out_rows) * 2 + 3 * layers * shape.layer_bytes())
        if need <= share * free:
            return layers
    raise SystemExit(f"not enough free disk in {workdir} ({free / GB:.1f} GB) for even one 70B-width layer")


def gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def run_case(label: str, shape: Shape, donor: Path, workdir: Path, keep: bool, rows: list[dict]) -> None:
    case = workdir / label
    base, patched, exported, patch = case / "base", case / "patched", case / "patched-fp16", case / "patch"
    case.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    size = write_checkpoint(base, shape)
    print(f"[{label}] wrote {gb(size)} synthetic checkpoint ({shape.layers} layers) in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    common = {"case": label, "layers": shape.layers, "embeddings": shape.embedding_bytes()}
    steps = [
        ("transplant", base, patched,
         tokensurgeon("transplant", str(base), str(donor), "-o", str(patched), "--method", "subword-mean", "--json")),
        ("export fp16", patched, exported, tokensurgeon("export", str(patched), "-o", str(exported), "--dtype", "fp16",
                                                        "--json")),
        ("export patch", patched, patch, tokensurgeon("export", str(patched), "-o", str(patch), "--embeddings-only",
                                                      "--json")),
    ]
    for step, source, out, command in steps:
        result = measured(command, case / f"{step.replace(' ', '-')}.log")
        rows.append(common | result | {"step": step, "input": dir_bytes(source), "written": dir_bytes(out)})
        print(f"[{label}] {step}: peak RSS {gb(result['peak_rss'])}, {result['wall_s']:.0f} s, "
              f"wrote {gb(rows[-1]['written'])}", flush=True)
        if step == "export fp16" and not keep:
            shutil.rmtree(out)  # disk: the large case cannot hold every output at once
    if not keep:
        shutil.rmtree(case)


def print_table(rows: list[dict]) -> None:
    header = ("case", "step", "checkpoint size", "embeddings", "peak RSS", "wall time", "bytes written")
    lines = [header, tuple("-" * len(h) for h in header)]
    for row in rows:
        lines.append((f"{row['case']} ({row['layers']}L)", row["step"], gb(row["input"]), gb(row["embeddings"]),
                      gb(row["peak_rss"]), f"{row['wall_s']:.0f} s", gb(row["written"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |")


def summarise(rows: list[dict]) -> None:
    """How peak RSS grows between the cases, next to how the checkpoint and its embeddings grow."""
    for step in ("transplant", "export fp16", "export patch"):
        found = [row for row in rows if row["step"] == step]
        for small, big in zip(found, found[1:]):
            line = (f"{step}: {small['case']} ({small['layers']}L) -> {big['case']} ({big['layers']}L): checkpoint "
                    f"x{big['input'] / small['input']:.2f}, embeddings x{big['embeddings'] / small['embeddings']:.2f}, "
                    f"peak RSS x{big['peak_rss'] / small['peak_rss']:.2f}")
            if step == "transplant":
                line += (f"; peak RSS minus the base embeddings {gb(small['peak_rss'] - small['embeddings'])} -> "
                         f"{gb(big['peak_rss'] - big['embeddings'])}")
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="mid,large", help="comma-separated: mid, large, tiny (a smoke test)")
    parser.add_argument("--donor", default="qwen2", help="donor tokenizer in the shared tokenizers folder")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tokensurgeon-bench-scale"))
    parser.add_argument("--max-layers", type=int, default=4, help="most 70B-width layers in the large case")
    parser.add_argument("--disk-share", type=float, default=0.6, help="share of the free disk the large case may use")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints and outputs")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    donor = TOKENIZERS / args.donor
    rows_in = len(AutoTokenizer.from_pretrained(TOKENIZERS / "llama3"))
    rows_out = len(AutoTokenizer.from_pretrained(donor))
    args.workdir.mkdir(parents=True, exist_ok=True)
    shapes = {
        "tiny": Shape(hidden=64, intermediate=128, heads=4, kv_heads=2, layers=2, rows=rows_in),
        "mid": Shape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=2, rows=rows_in),
    }
    large = Shape(hidden=8192, intermediate=28672, heads=64, kv_heads=8, layers=1, rows=rows_in)
    rows: list[dict] = []
    try:
        for label in args.cases.split(","):
            shape = shapes.get(label)
            if label == "large":
                layers = choose_layers(args.workdir, large, rows_out, args.max_layers, args.disk_share)
                shape = Shape(**{**large.__dict__, "layers": layers})
            if shape is None:
                raise SystemExit(f"unknown case {label!r}")
            run_case(label, shape, donor, args.workdir, args.keep, rows)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print()
    print(f"donor {args.donor} ({rows_out:,} rows), method subword-mean; {os.cpu_count()} CPUs")
    print_table(rows)
    summarise(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
