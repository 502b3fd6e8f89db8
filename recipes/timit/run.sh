#!/usr/bin/env bash
# TIMIT phoneme recognition with the online hard-alignment model (or the CTC baseline).
#
#   recipes/timit/run.sh                                  # offline synthetic corpus, vimco-seq
#   recipes/timit/run.sh --timit /data/TIMIT              # a real TIMIT copy
#   recipes/timit/run.sh --config recipes/timit/conf/ctc.yaml --name ctc
#   recipes/timit/run.sh --stage 2 --stop-stage 3 -- --num-samples 8 --lr 0.001
#
# Stages (each leaves a .done marker that records its options; a stage whose marker matches is
# skipped, so re-running is cheap and a changed option re-runs it):
#   0 prepare   manifests: `hardalign prepare timit DIR` or `hardalign prepare synth` (offline)
#   1 features  filterbank features + CMVN statistics cached for train/dev/test (and noisy tests)
#   2 train     `hardalign train --config CONF` (arguments after `--` override config keys)
#   3 evaluate  `hardalign evaluate` on dev and test (PER clean and per noise condition, JSON and
#               Markdown), `hardalign decode` (hypotheses with emission times), alignment pictures
set -euo pipefail

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
stage=0
stop_stage=3
timit=""
exp=exp/timit
config=$recipe_dir/conf/vimco-seq.yaml
name=""
synth_speakers=20
synth_utterances=80
synth_eval_speakers=8
synth_eval_utterances=20
eval_noise="white:10,white:0"
plots=3
nproc=auto

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  cat <<EOF
Options:
  --stage N / --stop-stage N   first / last stage to run (default 0 / 3)
  --timit DIR                  a TIMIT copy (default: build the offline synthetic corpus)
  --exp DIR                    experiment directory (default exp/timit)
  --config FILE                training config (default recipes/timit/conf/vimco-seq.yaml)
  --name NAME                  run name under EXP (default: the config's file name)
  --eval-noise LIST            frozen test conditions TYPE:SNR,... (default white:10,white:0; "" = clean only;
                               TYPE: white, pink, brown, babble or dir:PATH)
                               Training noise is a config key (conf/noisy.yaml), or after --:
                               -- --noise white,pink,babble --snr 0:15 --clean-fraction 0.2 (or --noise dir:PATH);
                               two-speaker mix: -- --mix-speaker 0.25 (conf/multispeaker.yaml)
  --synth-speakers N, --synth-utterances N, --synth-eval-speakers N, --synth-eval-utterances N
                               size of the synthetic corpus (default 20 x 80 train, 8 x 20 dev and test)
  --plots N                    alignment pictures written after evaluation (default 3)
  --nproc N                    data-parallel training processes (torchrun, one thread each; default
                               auto: 2 where the machine has 2 or more cores, else 1)
  -- KEY VALUE ...             overrides of training config keys (e.g. -- --num-samples 8)
EOF
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --timit) timit=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --eval-noise) eval_noise=$2; shift 2 ;;
    --synth-speakers) synth_speakers=$2; shift 2 ;;
    --synth-utterances) synth_utterances=$2; shift 2 ;;
    --synth-eval-speakers) synth_eval_speakers=$2; shift 2 ;;
    --synth-eval-utterances) synth_eval_utterances=$2; shift 2 ;;
    --plots) plots=$2; shift 2 ;;
    --nproc) nproc=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
overrides=("$@")

if [[ ! -f $config ]]; then
  echo "run.sh: config file '$config' does not exist" >&2
  exit 2
fi
if [[ -n $timit && ! -d $timit ]]; then
  echo "run.sh: --timit '$timit' is not a directory" >&2
  exit 2
fi
[[ -n $name ]] || name=$(basename "$config" .yaml)
data=$exp/data
run=$exp/$name
hardalign=(python -m hardalign.cli)
mkdir -p "$exp"
started=$SECONDS

# done_marker STAGE OPTIONS: true if the stage already ran with these options
is_done() { [[ -f $1 && "$(cat "$1")" == "$2" ]]; }
elapsed() { echo "[run.sh] $1 done in $((SECONDS - $2)) s (total $((SECONDS - started)) s)"; }

if [[ $stage -le 0 && $stop_stage -ge 0 ]]; then
  t=$SECONDS
  if [[ -n $timit ]]; then
    opts="timit $(cd "$timit" && pwd)"
  else
    opts="synth $synth_speakers $synth_utterances $synth_eval_speakers $synth_eval_utterances"
  fi
  if is_done "$data/.prepare.done" "$opts"; then
    echo "[run.sh] stage 0 prepare: already done ($opts)"
  else
    echo "[run.sh] stage 0 prepare: $opts"
    rm -f "$data/.features.done"
    if [[ -n $timit ]]; then
      "${hardalign[@]}" prepare timit "$timit" --out "$data"
    else
      "${hardalign[@]}" prepare synth --out "$data" --speakers "$synth_speakers" --utterances "$synth_utterances" \
        --eval-speakers "$synth_eval_speakers" --eval-utterances "$synth_eval_utterances" --no-features --quiet
    fi
    echo "$opts" > "$data/.prepare.done"
  fi
  elapsed "stage 0" "$t"
fi

if [[ $stage -le 1 && $stop_stage -ge 1 ]]; then
  t=$SECONDS
  opts="noise=$eval_noise"
  if is_done "$data/.features.done" "$opts"; then
    echo "[run.sh] stage 1 features: already done ($opts)"
  else
    echo "[run.sh] stage 1 features: $opts"
    python -m hardalign.speech.prepare_features --data-dir "$data" --eval-noise "$eval_noise"
    echo "$opts" > "$data/.features.done"
  fi
  elapsed "stage 1" "$t"
fi

if [[ $stage -le 2 && $stop_stage -ge 2 ]]; then
  t=$SECONDS
  echo "[run.sh] stage 2 train: $config -> $run ${overrides[*]:-}"
  # dev evaluations during training are clean; the noisy conditions are scored in stage 3
  if [[ $nproc == auto ]]; then
    nproc=$(( $(nproc) >= 2 ? 2 : 1 ))
  fi
  if [[ $nproc -gt 1 ]]; then
    # data-parallel: each process trains on its share of every global batch (one thread each)
    train=(torchrun --standalone --nproc-per-node "$nproc" -m hardalign.cli)
  else
    train=("${hardalign[@]}")
  fi
  "${train[@]}" train --config "$config" --data-dir "$data" --out-dir "$run" --resume auto "${overrides[@]}"
  elapsed "stage 2" "$t"
fi

if [[ $stage -le 3 && $stop_stage -ge 3 ]]; then
  t=$SECONDS
  echo "[run.sh] stage 3 evaluate: $run"
  noise_args=()
  [[ -z $eval_noise ]] || noise_args=(--eval-noise "$eval_noise")
  for split in dev test; do
    "${hardalign[@]}" evaluate --checkpoint "$run/checkpoint.pt" --split "$split" --data-dir "$data" "${noise_args[@]}"
  done
  "${hardalign[@]}" decode --checkpoint "$run/checkpoint.pt" --split test --data-dir "$data" --out "$run/hyp-test"
  mkdir -p "$run/plots"
  head -n "$plots" "$data/test.jsonl" | python -c 'import json, sys; [print(json.loads(line)["id"]) for line in sys.stdin]' |
    while read -r utt; do
      "${hardalign[@]}" plot alignment --checkpoint "$run/checkpoint.pt" --split test --utt "$utt" \
        --data-dir "$data" --out "$run/plots/$utt.png"
    done
  elapsed "stage 3" "$t"
  echo "[run.sh] results: $run/eval-dev.md $run/eval-test.md $run/hyp-test.txt $run/plots/"
fi
echo "[run.sh] finished in $((SECONDS - started)) s"
