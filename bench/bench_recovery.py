"""Recovery benchmark (issue 21): lm+rows (the old heal), lm+lora, distill+lora and distill+embeddings at equal
steps on P2 and P1, and a SmolLM2 draft for Gemma3 before and after `heal DRAFT --teacher GEMMA3`.

Pairs, built with transplant() into WORK/models when missing: P2 = SmolLM2-135M <- Llama-3 tokenizer
(subword-mean); P1 = Gemma3-270M <- SmolLM2-135M (omp, k = --omp-k);
draft = SmolLM2-135M made a draft for Gemma3-270M (--as-draft-for; --draft-method subword-mean, the default, or
omp).

Training text: the first --train-bytes (60 KB) of enwiki_head plus four UDHR languages (spa, ukr, jpn, ben); the
last 10% of each is the in-file held-out split the guard reads. Files never trained on at all (UNSEEN) give the
bits-per-byte ratios (patched / base with its own tokenizer) and their geometric mean. Per config: behaviour
retention (greedy continuations of --prompts prompts, chat-formatted with each model's own template when base
and patched both carry one, vs the base model's own: mean share of the base continuation's first 16 bytes
repeated exactly from the start), `evaluate --task arithmetic` accuracy (1-3 digit add/sub/mul, --per-group
problems each), seconds per step, peak RSS. Draft: acceptance rate and tokens/s of `evaluate --speculative`
(target Gemma3-270M) for the draft before and after healing and for universal assisted generation with the
untransplanted SmolLM2. --generate N trains on N greedy continuations the teacher writes from prompts of the
training text instead (heal --generate; the pair's base, the draft's target), the held-out split unchanged.
--draft-train all heals the draft with heal --train all (every weight) instead of lora.

Every measurement runs in its own child process, one at a time (a shared 2-core machine; each peak RSS is
its own), and leaves WORK/results/NAME.json, so a rerun resumes. One thread: on the loaded 2-core machine two
threads ran a matrix product more than 5x slower than one. Usage:

    OMP_NUM_THREADS=1 python bench/bench_recovery.py --work /work/bench_out --steps 20 --batch-size 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from bench_scale_omp import machine

SHARED = Path(os.environ.get("TOKENSURGEON_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CORPORA = SHARED / "corpora"
MODELS = Path.home() / ".cache" / "tokensurgeon" / "models"
SMOLLM2, GEMMA3 = MODELS / "smollm2-135m", MODELS / "gemma3-270m"
TRAIN = ("enwiki_head.txt", "udhr/spa.txt", "udhr/ukr.txt", "udhr/jpn.txt", "udhr/ben.txt")
UNSEEN = ("lee_news.txt", "udhr/ita.txt", "udhr/pol.txt", "udhr/tur.txt", "udhr/vie.txt", "udhr/kor.txt",
          "udhr/heb.txt", "udhr/tha.txt", "udhr/cmn_hant.txt", "udhr/fin.txt")
WIDE = ("udhr/ces.txt", "udhr/hun.txt", "udhr/ind.txt", "udhr/nld.txt", "udhr/por_PT.txt", "udhr/swe.txt",
        "udhr/tam.txt", "udhr/urd.txt", "udhr/yor.txt", "udhr/zul.txt")  # --wide: the rest of ../shared's UDHR
PAIRS = {"p2": SMOLLM2, "p1": GEMMA3}  # patched model -> its base (the teacher)
CONFIGS = {"lm+rows": ("lm", "rows"), "lm+lora": ("lm", "lora"), "distill+lora": ("distill", "lora"),
           "distill+embeddings": ("distill", "embeddings"), "distill+all": ("distill", "all")}
DRAFT_METHODS = ("omp", "subword-mean")
PROMPT_BYTES, COMPARE_BYTES = 80, 16


def read(name: str) -> str:
    return (CORPORA / name).read_text(encoding="utf-8")


def cut(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def training_files(work: Path, train_bytes: int, wide: bool = False, extra: tuple[str, ...] = ()) -> list[Path]:
    """The training texts as files (heal reads files): enwiki cut to train_bytes, the UDHR files whole; ``wide``
    adds every UDHR file that is not an unseen text, ``extra`` files of the caller's as they are."""
    folder = work / f"train-{train_bytes}{'-wide' * wide}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TRAIN + WIDE * wide:
        path = folder / Path(name).name
        if not path.exists():
            path.write_text(cut(read(name), train_bytes) if name == "enwiki_head.txt" else read(name), encoding="utf-8")
        paths.append(path)
    return paths + [Path(name) for name in extra]


def guard_news() -> str:
    """heal --guard-text for --guard-news: lee_news's characters 20,000-100,000, apart from both the unseen bits per
    byte (its first --eval-max-bytes) and the behaviour prompts (past 100,000)."""
    return read("lee_news.txt")[20_000:100_000]


def build(work: Path, omp_k: int, device: str, names: list[str]) -> None:
    """The patched models ``names`` (of p2, p1, draft-METHOD), made once with transplant() (the CLI's function)."""
    from tokensurgeon.config import TransplantConfig
    from tokensurgeon.pipeline.transplant import transplant

    models = work / "models"
    specs = {
        "p2": dict(base=SMOLLM2, donor=SHARED / "tokenizers" / "llama3",
                   method="subword-mean"),
        "p1": dict(base=GEMMA3, donor=SMOLLM2, method="omp", method_options={"k": omp_k}),
    } | {f"draft-{method}": dict(base=SMOLLM2, donor=GEMMA3, draft_for=GEMMA3, method=method)
         for method in DRAFT_METHODS}
    for name in names:
        if not (models / name / "report.json").is_file():
            transplant(TransplantConfig(out=models / name, device=device, **specs[name]))


def prompts(n: int) -> list[str]:
    """n prompts from unseen text: lee_news sentences, and UDHR lines in two unseen languages."""
    news = [s.strip() for s in read("lee_news.txt")[100_000:].split(". ") if len(s.strip()) > PROMPT_BYTES]
    udhr = [line.strip() for name in ("udhr/ita.txt", "udhr/tur.txt")
            for line in read(name).split("\n") if len(line.strip()) > PROMPT_BYTES]
    chosen = news[:n - n // 5] + udhr[:n // 5]
    return [cut(p, PROMPT_BYTES).rsplit(" ", 1)[0] for p in chosen]


def prompt_ids(tokenizer, text: str, chat: bool) -> list[int]:
    """The model's chat template around the prompt (chat), else BOS + the text (as evaluate does)."""
    from tokensurgeon.evaluation.bpb import context_prefix

    if chat:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return context_prefix(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"]


def continuations(model, tokenizer, texts: list[str], new_tokens: int, chat: bool, batch: int = 10) -> list[str]:
    """Greedy continuations in left-padded batches (one prompt at a time is 10x slower on a loaded CPU)."""
    device, out = next(model.parameters()).device, []
    pad = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    model.eval()
    for begin in range(0, len(texts), batch):
        encoded = [prompt_ids(tokenizer, text, chat) for text in texts[begin:begin + batch]]
        width = max(map(len, encoded))
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        with torch.inference_mode():
            generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                       num_beams=1, temperature=None, top_p=None, top_k=None, pad_token_id=pad)
        out += [tokenizer.decode(row[width:].tolist(), skip_special_tokens=True) for row in generated]
    return out


def retention(ours: list[str], base: list[str]) -> float:
    """Mean share of the base continuation's first COMPARE_BYTES bytes that ours repeats exactly from the start
    (the measure heal's --guard-task retention uses)."""
    from tokensurgeon.recovery.retention import agreement

    return sum(agreement(a, b, COMPARE_BYTES) for a, b in zip(ours, base)) / len(base)


def unseen_texts(max_bytes: int) -> dict[str, str]:
    return {Path(n).stem: cut(read(n), max_bytes) for n in UNSEEN}


def behaviour(args, model, tokenizer, chat: bool) -> dict:
    """Unseen bits per byte, continuations (chat-formatted when chat) and arithmetic accuracy of one model."""
    from tokensurgeon.evaluation import score_text
    from tokensurgeon.evaluation.tasks.arithmetic import Arithmetic

    model.eval()
    clock = time.perf_counter()
    with torch.no_grad():
        bpb = {label: score_text(model, tokenizer, text, label=label, batch_size=4).bits_per_byte
               for label, text in unseen_texts(args.eval_max_bytes).items()}
    seconds = {"bpb": time.perf_counter() - clock}
    task = Arithmetic(per_group=args.per_group, digits=(1, 2, 3)).run(model, tokenizer)
    seconds["arithmetic"] = time.perf_counter() - clock - seconds["bpb"]
    ours = continuations(model, tokenizer, prompts(args.prompts), args.new_tokens, chat)
    seconds["continuations"] = time.perf_counter() - clock - seconds["bpb"] - seconds["arithmetic"]
    print(f"[measured in {seconds}]", file=sys.stderr, flush=True)
    return {"bpb": bpb, "continuations": ours, "arithmetic": task.summary["accuracy"], "task": task.summary,
            "chat": chat, "measure_seconds": seconds}


def child_model(args, pair: str, name: str) -> dict:
    """One row: the base, the untrained transplant, or one trained config. Prompts are chat-formatted when
    both base and patched carry a chat template (each model its own)."""
    from transformers import AutoTokenizer

    from tokensurgeon.config import guard_tasks_for
    from tokensurgeon.evaluation import load_for_eval
    from tokensurgeon.recovery.options import RecoveryOptions
    from tokensurgeon.recovery.train import pick_device, recover

    patched = Path(args.work) / "models" / pair
    chat = all(AutoTokenizer.from_pretrained(path).chat_template for path in (PAIRS[pair], patched))
    if name in ("base", "untrained"):
        model, tokenizer = load_for_eval(PAIRS[pair] if name == "base" else patched, device=pick_device(args.device))
        return {"config": name} | behaviour(args, model, tokenizer, chat)
    from tokensurgeon.jobs.heal import split_held_out

    variants = r"@|\+batch-rows|\+lr|\+lora-lr|\+wide|\+extra-|\+guard-|\+gen|\+b|\+anchor|\+kl|\+hidden|\+body-lr"
    objective, train = CONFIGS[re.split(variants, name)[0]]
    splits = {p.stem: split_held_out(p.read_text(encoding="utf-8"), 0.1)
              for p in training_files(Path(args.work), args.train_bytes, args.wide, args.extra_text)}
    steps = args.steps if args.minutes is None else 10**6  # equal wall time: as many steps as fit
    options = RecoveryOptions(objective=objective, train=train, steps=steps, eval_every=args.eval_every,
                              patience=steps, batch_size=args.batch_size or None, context=args.context,
                              eval_max_bytes=args.eval_max_bytes, lm_mix=args.lm_mix, max_minutes=args.minutes,
                              **({} if args.kl_mix is None else {"kl_mix": args.kl_mix}),
                              **({} if args.hidden_mix is None else {"hidden_mix": args.hidden_mix}),
                              **({} if args.body_lr is None else {"body_lr": args.body_lr}),
                              **({} if args.lr is None else {"lr": args.lr}),
                              **({} if args.lora_lr is None else {"lora_lr": args.lora_lr}),
                              **({} if args.anchor_weight is None else {"anchor_weight": args.anchor_weight}),
                              batch_rows=args.batch_rows,  # guard tasks as heal resolves them (the base teaches)
                              guard_tasks=guard_tasks_for(tuple(filter(None, args.guard_task.split(","))) or None,
                                                          has_teacher=True))
    clock = time.perf_counter()
    train_texts = {k: v[0] for k, v in splits.items()}
    if args.generate:  # heal --generate: the base's own greedy continuations of prompts from the training text
        from tokensurgeon.config import GENERATE_BATCH_SIZE
        from tokensurgeon.recovery.generate import teacher_continuations

        train_texts = {"teacher": "\n\n".join(teacher_continuations(
            PAIRS[pair], train_texts, args.generate, context=args.context, batch_size=GENERATE_BATCH_SIZE,
            device=pick_device(args.device)))}
    model, result = recover(patched, train_texts, {k: v[1] for k, v in splits.items()},
                            options, teacher=PAIRS[pair], device=args.device,  # unseen texts scored in behaviour()
                            guard_texts={"lee_news_mid": guard_news()} if args.guard_news else None)
    wall = time.perf_counter() - clock
    return {"config": name, "steps": result.steps_run, "best_step": result.best_step, "wall_seconds": wall,
            "held_out": [asdict(row) for row in result.held_out], "history": [asdict(h) for h in result.history],
            "trainable": result.trainable, "batch_size": result.batch_size,
            "seconds_per_step": result.seconds_per_step, "tokens_per_second": result.tokens_per_second,
            } | behaviour(args, model, AutoTokenizer.from_pretrained(patched), chat)


def child_draft(args, name: str) -> dict:
    """draft-heal: heal DRAFT --teacher GEMMA3 (distill: token KL); draft-before/after: evaluate --speculative."""
    work = Path(args.work)
    models = work / "models"
    variant = draft_variant(args)
    if name.startswith("draft-heal"):
        from tokensurgeon.config import HealConfig
        from tokensurgeon.jobs.heal import heal

        steps = args.steps if args.minutes is None else 10**6  # --minutes: as many steps as fit
        texts = tuple(training_files(work, args.train_bytes, args.wide, args.extra_text))
        report = heal(HealConfig(patched=models / draft_model(args), texts=texts,
                                 out=models / f"{draft_model(args)}-healed{variant}", teacher=GEMMA3,
                                 objective="distill",
                                 train=args.draft_train, generate=args.generate,
                                 steps=steps, eval_every=args.eval_every, patience=steps, max_minutes=args.minutes,
                                 batch_size=args.batch_size or None, context=args.context,
                                 eval_max_bytes=args.eval_max_bytes, device=args.device, force=True))
        return {"config": name, "steps": report.steps_run, "best_step": report.best_step,
                "batch_size": report.options["batch_size"],
                "seconds_per_step": report.seconds_per_step, "tokens_per_second": report.tokens_per_second,
                "texts": [asdict(row) for row in report.texts]}
    from tokensurgeon.config import SpeculativeConfig
    from tokensurgeon.evaluation.speculative import speculative_benchmark

    drafts = ([models / draft_model(args), SMOLLM2] if name.startswith("draft-before")
              else [models / f"{draft_model(args)}-healed{variant}"])
    config = SpeculativeConfig(prompts=args.spec_prompts, max_new_tokens=args.spec_tokens, device=args.device)
    report = speculative_benchmark(GEMMA3, drafts, {"lee_news": cut(read("lee_news.txt"), 200_000)[100_000:]},
                                   config)
    return {"config": name} | report.to_dict()


def draft_model(args) -> str:
    """The draft's folder in WORK/models: named by its transplant method."""
    return f"draft-{args.draft_method}"


def method_tag(args) -> str:
    """The draft method in result names; none for subword-mean, whose results kept the names they had before
    --draft-method."""
    return "" if args.draft_method == "subword-mean" else f"+{args.draft_method}"


def extra_tag(args) -> str:
    """The run-name suffix of --extra-text files, one per file by its stem."""
    return "".join(f"+extra-{Path(p).stem}" for p in args.extra_text)


def draft_variant(args) -> str:
    """The healed draft's name suffix: its method, what it trained on, and for how long."""
    return (method_tag(args) + (f"@{args.steps}steps" if args.minutes is None else f"@{args.minutes:g}min")
            + ("" if args.batch_size == 4 else f"+b{args.batch_size or 'auto'}")
            + (f"+gen{args.generate}" if args.generate else "") + ("+wide" if args.wide else "")
            + extra_tag(args)
            + ("" if args.draft_train == "lora" else f"+{args.draft_train}"))


def geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def pair_table(rows: dict[str, dict]) -> str:
    base, labels = rows["base"], list(rows["base"]["bpb"])
    head = ["config", *labels, "geomean", "retention", "arith", "s/step", "tok/s", "peak RSS GB", "best step"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines.append(f"| base | " + " | ".join("1" for _ in labels) + f" | 1 | 1 | {base['arithmetic']:.3f} | - | - | "
                 f"{base['peak_rss_gb']:.1f} | - |")
    for name, row in rows.items():
        if name == "base":
            continue
        ratios = [row["bpb"][label] / base["bpb"][label] for label in labels]
        speed = (f"{row['seconds_per_step']:.2f} (x{row.get('batch_size', '?')}) | {row['tokens_per_second']:.0f} | {row['peak_rss_gb']:.1f} | "
                 f"{row['best_step']}/{row['steps']}") if "steps" in row else f"- | - | {row['peak_rss_gb']:.1f} | -"
        lines.append(f"| {name} | " + " | ".join(f"{r:.3f}" for r in ratios)
                     + f" | {geomean(ratios):.3f} | {retention(row['continuations'], base['continuations']):.3f} | "
                     f"{row['arithmetic']:.3f} | {speed} |")
    return "\n".join(lines)


def draft_table(before: dict, heal: dict, after: dict) -> str:
    lines = ["| draft | mode | acceptance | mean accepted/round | tok/s | speedup | identical |", "|---" * 7 + "|",
             f"| (target alone) | - | - | - | {before['baseline_tokens_per_second']:.1f} | 1 | - |"]
    for label, report in (("before heal", before), ("after heal", after)):
        for run in report["runs"]:
            name = "untransplanted SmolLM2" if run["mode"].startswith("universal") else f"transplanted, {label}"
            rate = "-" if run["acceptance_rate"] is None else f"{run['acceptance_rate']:.3f}"
            mean = "-" if run["mean_accepted"] is None else f"{run['mean_accepted']:.2f}"
            speed = "-" if run["tokens_per_second"] is None else f"{run['tokens_per_second']:.1f}"
            ratio = "-" if run["speedup"] is None else f"{run['speedup']:.2f}"
            lines.append(f"| {name} | {run['mode']} | {rate} | {mean} | {speed} | {ratio} | "
                         f"{run['identical']}/{report['prompts']} |"
                         + (f" error: {run['error']}" if run["error"] else ""))
    lines.append(f"\nheal: {heal['steps']} steps (best {heal['best_step']}) of {heal.get('batch_size')} sequences, "
                 f"{heal['seconds_per_step']:.2f} s/step, "
                 f"held-out bits per byte: " + ", ".join(f"{t['text']} {t['before_bpb']:.3f} -> {t['after_bpb']:.3f}"
                                                        for t in heal["texts"]))
    return "\n".join(lines)


def run_child(args, name: str) -> dict:
    """Run one measurement in a fresh process (its own peak RSS) unless its result file exists."""
    out = Path(args.work) / "results" / f"{name}.json"
    if not out.is_file():
        clock = time.perf_counter()
        argv = [sys.executable, __file__, *sys.argv[1:], "--one", name]
        if subprocess.run(argv).returncode:
            raise SystemExit(f"{name} failed")
        print(f"[{name} done in {time.perf_counter() - clock:.0f} s]", file=sys.stderr, flush=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/work/bench_out")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per step; 0: heal's default (4 on "
                        "CPU, sized from free memory on CUDA)")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--eval-max-bytes", type=int, default=1500)
    parser.add_argument("--lm-mix", type=float, default=0.0)
    parser.add_argument("--kl-mix", type=float, default=None, help="heal --kl-mix (default: heal's)")
    parser.add_argument("--hidden-mix", type=float, default=None, help="heal --hidden-mix (default: heal's)")
    parser.add_argument("--body-lr", type=float, default=None, help="heal --body-lr, --train all (default: heal's)")
    parser.add_argument("--guard-news", action="store_true", help="heal --guard-text with lee_news's characters "
                        "20,000-100,000 (English news apart from the unseen text and the behaviour prompts)")
    parser.add_argument("--lr", type=float, default=None, help="embedding learning rate (default: heal's)")
    parser.add_argument("--lora-lr", type=float, default=None, help="LoRA learning rate (default: heal's)")
    parser.add_argument("--wide", action="store_true", help="train on every UDHR file that is not unseen too")
    parser.add_argument("--extra-text", action="append", default=[], help="one more training file (repeatable; "
                        "e.g. bench/vocab_text.py's teacher samples)")
    parser.add_argument("--anchor-weight", type=float, default=None, help="heal --anchor-weight (default: heal's)")
    parser.add_argument("--omp-k", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--per-group", type=int, default=5)
    parser.add_argument("--spec-prompts", type=int, default=8)
    parser.add_argument("--spec-tokens", type=int, default=32)
    parser.add_argument("--pairs", default="p2,p1")
    parser.add_argument("--minutes", type=float, default=None,
                        help="equal wall time: each trained config trains this long (as many steps as fit; the "
                             "guard evaluates every --eval-every steps, so keep that small) instead of --steps")
    parser.add_argument("--configs", default="", help="comma-separated subset of the trained configs (default all)")
    parser.add_argument("--batch-rows", action="store_true", help="heal --batch-rows: only rows in the batch move")
    parser.add_argument("--guard-task", default="", help="comma-separated heal --guard-task values (e.g. arithmetic; "
                        "none: no guard task); empty: heal's default")
    parser.add_argument("--draft", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--draft-method", choices=DRAFT_METHODS, default="subword-mean",
                        help="the draft's transplant method (subword-mean: transplant's default, drafts included)")
    parser.add_argument("--draft-train", choices=("lora", "all"), default="lora",
                        help="heal --train for the draft (all: every weight, the body at heal's --body-lr)")
    parser.add_argument("--generate", type=int, default=0, help="heal --generate N: train on N greedy continuations "
                        "of the teacher (the pair's base, the draft's target) from prompts of the training text")
    parser.add_argument("--train-bytes", type=int, default=60_000, help="bytes of enwiki_head to train on (the "
                        "UDHR training files, ~12-26 KB each, are used whole)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (CUDA under bf16 autocast when present)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one measurement
    args = parser.parse_args()
    torch.manual_seed(0)
    work = Path(args.work)
    if args.one:
        pair, _, name = args.one.partition(":")
        result = child_draft(args, pair) if pair.startswith("draft") else child_model(args, pair, name)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        (work / "results").mkdir(parents=True, exist_ok=True)
        (work / "results" / f"{args.one}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
        return
    from tokensurgeon.config import HealConfig

    clock = time.perf_counter()
    print(machine(), flush=True)  # 30-minute figures compare across stops only on one kind of machine
    pairs = list(filter(None, args.pairs.split(",")))
    build(work, args.omp_k, args.device, pairs + [draft_model(args)] * args.draft)
    print(f"{f'{args.steps} steps' if args.minutes is None else f'{args.minutes:g} minutes'} of training, steps of "
          f"{args.batch_size or 'auto'} x {args.context} tokens (lr {args.lr or HealConfig.lr:g}, LoRA r=16 lr "
          f"{args.lora_lr or HealConfig.lora_lr:g}), training files: "
          f"{len(TRAIN + WIDE * args.wide) + len(args.extra_text)}, eval every "
          f"{args.eval_every}; unseen "
          f"texts: first {args.eval_max_bytes} bytes; {args.prompts} prompts x {args.new_tokens} greedy tokens, first "
          f"{COMPARE_BYTES} bytes compared; arithmetic: {args.per_group} problems per op and 1-3 digits; "
          f"P1 omp k={args.omp_k}", flush=True)
    for pair in pairs:
        budget = (("" if args.minutes is None else f"@{args.minutes:g}min") + ("+batch-rows" if args.batch_rows else "")
                  + ("" if args.lr is None else f"+lr{args.lr:g}")
                  + ("" if args.lora_lr is None else f"+lora-lr{args.lora_lr:g}") + ("+wide" if args.wide else "")
                  + extra_tag(args)
                  + ("" if args.batch_size == 4 else f"+b{args.batch_size or 'auto'}")
                  + ("" if args.anchor_weight is None else f"+anchor{args.anchor_weight:g}")
                  + ("" if args.kl_mix is None else f"+kl{args.kl_mix:g}")
                  + ("" if args.hidden_mix is None else f"+hidden{args.hidden_mix:g}")
                  + ("" if args.body_lr is None else f"+body-lr{args.body_lr:g}")
                  + ("+guard-news" if args.guard_news else "")
                  + (f"+gen{args.generate}" if args.generate else "")
                  + "".join(f"+guard-{task}" for task in filter(None, args.guard_task.split(","))))
        configs = [name for name in CONFIGS if not args.configs or name in args.configs.split(",")]
        rows = {name: run_child(args, f"{pair}:{name}") for name in ("base", "untrained")}
        rows |= {name + budget: run_child(args, f"{pair}:{name}{budget}") for name in configs}
        print(f"\n{pair.upper()}: {work / 'models' / pair} (chat-formatted prompts: {rows['base']['chat']})")
        print(pair_table(rows), flush=True)
    if args.draft:
        variant = draft_variant(args)
        before, heal_row, after = (run_child(args, name) for name in (f"draft-before{method_tag(args)}",
                                                                     f"draft-heal{variant}",
                                                                     f"draft-after{variant}"))
        print(f"\nDRAFT: {work / 'models' / draft_model(args)} for {GEMMA3}, {args.spec_prompts} lee_news prompts x "
              f"{args.spec_tokens} new tokens, k=5")
        print(draft_table(before, heal_row, after))
    print(f"total wall {time.perf_counter() - clock:.0f} s")


if __name__ == "__main__":
    main()
