"""Task retention on real pairs (issue 20): base and patched side by side, per operand length.

    .venv/bin/python bench/bench_tasks.py --pair P2 BASE_DIR PATCHED_DIR --pair P1 BASE_DIR PATCHED_DIR \
        [--per-group 20] [--task arithmetic|FILE.jsonl] [--json out.json]

Each pair prints a markdown table: one row per operation and operand length, one accuracy column per
model, then accuracy per operand length over all operations. One model is in memory at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", nargs="+", action="append", required=True, metavar="NAME DIR",
                        help="NAME then model directories (base first)")
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--per-group", type=int, default=20, help="arithmetic problems per operation and length")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--digits", default="1,2,3,4,5,6")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 on a shared "
                        "machine: two threads on two busy cores ran 8x slower than one")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from tokensurgeon.evaluation.tasks import get_task, markdown_table, run_task
    from tokensurgeon.evaluation.tasks.arithmetic import accuracy_by_digits

    options = ({"per_group": args.per_group, "shots": args.shots, "batch_size": args.batch_size,
                "digits": tuple(int(d) for d in args.digits.split(","))} if args.task == "arithmetic" else {})
    task = get_task(args.task, **options)
    print(f"task: {json.dumps(task.describe())}", flush=True)
    out = {}
    for name, *models in args.pair:
        start = time.perf_counter()
        def report(label: str, done: int, total: int) -> None:
            print(f"  {label}: {done}/{total} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

        results = run_task([Path(m) for m in models], task, device="cpu", progress=report)
        seconds = time.perf_counter() - start
        print(f"\n### {name} ({seconds:.0f} s)\n\n" + markdown_table(results), flush=True)
        if args.task == "arithmetic":
            by = [accuracy_by_digits(r) for r in results]
            print("| digits | " + " | ".join(Path(r.model).name for r in results) + " |")
            print("|---:|" + "---:|" * len(results))
            for digits in by[0]:
                print(f"| {digits} | " + " | ".join(f"{b[digits]:.3f}" for b in by) + " |")
            for r in results:
                print(f"  {Path(r.model).name} e.g. {r.examples[:2]}")
        out[name] = [r.to_dict() for r in results]
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
