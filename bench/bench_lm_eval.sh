#!/usr/bin/env bash
# A patched output under lm-eval-harness (issue 20): a local multiple-choice task, nothing downloaded.
#
#   bench/bench_lm_eval.sh MODEL_DIR [MODEL_DIR...]      (env: DATA=bench/data/mc_sample.jsonl LIMIT= BATCH=8)
#
# Needs lm-eval (pip install "tokensurgeon[tasks]" or pip install "lm-eval>=0.4"). The task YAML is written
# to a temporary --include_path; it reads DATA (JSON lines of {context, choices, gold}) through the
# datasets "json" builder, so the same file also runs as `tokensurgeon evaluate --task DATA`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
data="$(realpath "${DATA:-$here/bench/data/mc_sample.jsonl}")"
tasks="$(mktemp -d)"
trap 'rm -rf "$tasks"' EXIT
cat > "$tasks/tokensurgeon_mc.yaml" <<YAML
task: tokensurgeon_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: $data
test_split: test
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{gold}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
YAML
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for model in "$@"; do
  echo "== $model"
  "$python" -m lm_eval --model hf \
    --model_args "pretrained=$(realpath "$model"),dtype=float32" \
    --tasks tokensurgeon_mc --include_path "$tasks" --device cpu --batch_size "${BATCH:-8}" \
    ${LIMIT:+--limit "$LIMIT"}
done
