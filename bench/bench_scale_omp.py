"""OMP at the scale users bring (issue 19), side by side with mergekit-tokensurgeon, in one run.

Two cases, each tool in its own process, one after the other (wall time and peak RSS from wait4):

* P1: base Gemma3-270M <- donor SmolLM2-135M (a model), OMP k=64, ~2,800 new tokens.
  Tools: tokensurgeon, mergekit-tokensurgeon, and optionally an older tokensurgeon checkout
  (``--reference-tree``) to check that held-out ratios stay within 0.005 of it.
* draft: SmolLM2-135M made a draft for Gemma3-270M (``--as-draft-for``; OMP, k=64, ~210k new tokens
  over 46k anchors). mergekit runs the same pair under a cap and is reported as "did not finish".

Prints wall, peak RSS, tokensurgeon's phase timings (report.json) and, for P1, bits per byte of the base
and of every output on held-out texts (none of them was used to tune the solver).

    python bench/bench_scale_omp.py [--cases p1,draft] [--k 64] [--mergekit-cap-minutes 60]
                                    [--reference-tree DIR] [--skip-mergekit]

mergekit 0.1.5 is installed into bench/.venv-mergekit (beside torch==2.13.0) when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOKENSURGEON_SHARED", ROOT.parent / "shared"))
MERGEKIT_VENV = ROOT / "bench" / ".venv-mergekit"
TEXTS = ["lee_news.txt", "enwiki_head.txt", "udhr/spa.txt", "udhr/ukr.txt", "udhr/urd.txt", "udhr/cmn_hant.txt",
         "udhr/ben.txt"]


@dataclass
class Run:
    """One tool's transplant: wall seconds and peak RSS (GB), or None when it hit the cap."""

    tool: str
    out: Path
    wall: float | None = None
    rss: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    ranking: str | None = None  # OMP's full-correlation precision (report.json: method.info.selection_dtype)


def ensure_mergekit() -> Path:
    tool = MERGEKIT_VENV / "bin" / "mergekit-tokensurgeon"
    if not tool.exists():
        subprocess.run([sys.executable, "-m", "venv", str(MERGEKIT_VENV)], check=True)
        pip = [str(MERGEKIT_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)
        subprocess.run(pip + ["mergekit==0.1.5"], check=True)
    return tool


def measured(run: Run, command: list[str], env: dict | None = None, cap_s: float | None = None) -> Run:
    """Run ``command`` to completion or until ``cap_s``; fill in wall and peak RSS of its process tree."""
    shutil.rmtree(run.out, ignore_errors=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                               start_new_session=True)
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if cap_s is not None and time.perf_counter() - start > cap_s:
            os.killpg(process.pid, 9)
            os.wait4(process.pid, 0)
            print(f"{run.tool}: did not finish within {cap_s / 60:.0f} min", flush=True)
            return run
        time.sleep(0.2)
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(command)}\n{process.stderr.read().decode()[-3000:]}")
    run.wall, run.rss = time.perf_counter() - start, usage.ru_maxrss / 1024 / 1024
    report = run.out / "report.json"
    if report.exists():
        written = json.loads(report.read_text())
        run.timings = written.get("timings", {})
        run.ranking = written.get("method", {}).get("info", {}).get("selection_dtype")
    print(f"{run.tool}: {run.wall:.1f} s, peak RSS {run.rss:.2f} GB", flush=True)
    return run


def ours(name: str, out: Path, args: list[str], device: str,
         tree: Path | None = None) -> tuple[Run, list[str], dict]:
    """A tokensurgeon run, from this checkout or from ``tree`` (an older checkout, put first on PYTHONPATH)."""
    env = dict(os.environ) | ({"PYTHONPATH": str(tree)} if tree else {})
    return Run(name, out), [sys.executable, "-m", "tokensurgeon", "transplant", *args, "-o", str(out),
                            "--force", "--device", device], env


def print_runs(title: str, runs: list[Run]) -> None:
    print(f"\n{title}\n{'tool':<24}{'wall s':>9}{'peak RSS GB':>13}  phases (s)")
    for run in runs:
        wall = f"{run.wall:>9.1f}" if run.wall is not None else f"{'DNF':>9}"
        rss = f"{run.rss:>13.2f}" if run.rss is not None else f"{'-':>13}"
        phases = ", ".join(f"{name} {seconds:.1f}" for name, seconds in run.timings.items())
        phases += f"; ranking in {run.ranking}" if run.ranking else ""
        print(f"{run.tool:<24}{wall}{rss}  {phases}")
    finished = {run.tool: run.wall for run in runs if run.wall is not None}
    if "tokensurgeon" in finished and "mergekit" in finished:
        print(f"tokensurgeon / mergekit wall: {finished['tokensurgeon'] / finished['mergekit']:.3f}")


def p1(args: argparse.Namespace, base: Path, donor: Path) -> None:
    runs = [measured(*ours("tokensurgeon", args.out / "p1-ours", [str(base), str(donor), "--method", "omp",
                                                                   "--option", f"k={args.k}"], args.device))]
    if args.reference_tree:
        runs.append(measured(*ours("tokensurgeon@reference", args.out / "p1-reference",
                                   [str(base), str(donor), "--method", "omp", "--option", f"k={args.k}"],
                                   args.device, tree=args.reference_tree)))
    if not args.skip_mergekit:
        run = Run("mergekit", args.out / "p1-mergekit")
        runs.append(measured(run, [str(ensure_mergekit()), str(base), str(donor), str(run.out), "-a", "omp",
                                   "-k", str(args.k), "--device", "cpu"], cap_s=args.mergekit_cap_minutes * 60))
    print_runs(f"P1: base {base.name} <- donor {donor.name} (model), OMP k={args.k}, {os.cpu_count()} CPUs, "
               f"tokensurgeon on {args.device}", runs)

    from tokensurgeon.evaluation.bpb import evaluate_models, truncate_utf8

    done = [run for run in runs if run.wall is not None]
    texts = {name: truncate_utf8((SHARED / "corpora" / name).read_text(encoding="utf-8"), args.max_bytes)
             for name in TEXTS}
    scores = evaluate_models([base] + [run.out for run in done], texts, device=args.device)
    print(f"\nheld-out bits per byte, first {args.max_bytes} bytes of each text (ratio = output / base)")
    print(f"{'text':<18}{'base':>8}" + "".join(f"{run.tool[:22]:>24}" for run in done)
          + ("   ours - reference" if args.reference_tree else ""))
    for i, name in enumerate(TEXTS):
        base_bpb = scores[0].scores[i].bits_per_byte
        ratios = [result.scores[i].bits_per_byte / base_bpb for result in scores[1:]]
        line = f"{name:<18}{base_bpb:>8.4f}" + "".join(f"{ratio:>24.4f}" for ratio in ratios)
        if args.reference_tree:
            line += f"{ratios[0] - ratios[1]:>+19.4f}"
        print(line)


def draft(args: argparse.Namespace, base: Path, target: Path) -> None:
    runs = [measured(*ours("tokensurgeon", args.out / "draft-ours", [str(base), "--as-draft-for", str(target),
                                                                    "--method", "omp", "--option", f"k={args.k}"],
                           args.device))]
    if not args.skip_mergekit:
        run = Run("mergekit", args.out / "draft-mergekit")
        runs.append(measured(run, [str(ensure_mergekit()), str(base), str(target), str(run.out), "-a", "omp",
                                   "-k", str(args.k), "--device", "cpu"], cap_s=args.mergekit_cap_minutes * 60))
    report = json.loads((runs[0].out / "report.json").read_text())
    print_runs(f"draft: {base.name} as a draft for {target.name}, OMP k={args.k}, {report['counts']['computed']} "
               f"new tokens, {os.cpu_count()} CPUs, tokensurgeon on {args.device}", runs)


def machine() -> str:
    """The CPU's name and its bf16 and float32 GEMM rates at the solver's shape: walls compare across stops only on
    one machine (an AMD EPYC without AMX ran the draft's correlations ~5x slower than the Intel machine with it, and
    a Xeon without AMX multiplies bf16 at half its float32 rate). Up to five products per precision, fewer once a
    second has passed: an AVX2-only CPU multiplies bf16 at ~1 GFLOP/s, 20 s a product."""
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown CPU")
    rates = []
    for dtype in (torch.bfloat16, torch.float32):
        left, right = torch.randn(294, 640).to(dtype), torch.randn(640, 46080).to(dtype)
        torch.mm(left, right)
        start, done = time.perf_counter(), 0
        while done < 5 and time.perf_counter() - start < 1.0:
            torch.mm(left, right)
            done += 1
        rates.append(done * 2 * 294 * 640 * 46080 / (time.perf_counter() - start) / 1e9)
    return (f"machine: {name}, {os.cpu_count()} CPUs, GEMM (294 x 640 by 640 x 46080) bf16 {rates[0]:.0f}, "
            f"float32 {rates[1]:.0f} GFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="p1,draft", help="comma-separated: p1, draft")
    parser.add_argument("--max-bytes", type=int, default=4000, help="bytes of each text to score")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("/tmp/tokensurgeon-bench-scale"))
    parser.add_argument("--reference-tree", type=Path, help="an older tokensurgeon checkout to compare P1 with")
    parser.add_argument("--skip-mergekit", action="store_true")
    parser.add_argument("--mergekit-cap-minutes", type=float, default=60)
    parser.add_argument("--device", default="cpu", help="tokensurgeon's --device (mergekit always runs on cpu): "
                        "cpu, cuda or auto")
    args = parser.parse_args()

    from tokensurgeon.zoo import ensure_model

    print(machine())
    gemma, smollm = ensure_model("gemma3-270m"), ensure_model("smollm2-135m")
    cases = args.cases.split(",")
    if "p1" in cases:
        p1(args, gemma, smollm)
    if "draft" in cases:
        draft(args, smollm, gemma)


if __name__ == "__main__":
    main()
