#!/usr/bin/env bash
# The GPU accuracy run: QLoRA SFT (sft/configs/qwen2.5-0.5b-qlora.yaml) on a corpus's full training split, then
# its full test split through eval's transformers backend (the same request contract and decoding constraint
# as every other path), recorded as bench/results/<corpus>-gpu-accuracy.json with the GPU named.
# Made for a machine with an NVIDIA GPU, PyTorch with CUDA, and no network:
#
#   bench/gpu_accuracy.sh prepare [--wheels DIR] [--python-version 3.12]
#       here, with a package index: download the wheels of bench/gpu/wheels.txt for the GPU machine's Python
#   bench/gpu_accuracy.sh run --model PATH [--corpus ncbi-disease] [--wheels DIR] [--run-dir DIR] [key=value ...]
#       there: install the wheels whose modules do not import yet (into $MEDNER_GPU_DEPS), train, evaluate, record
#   bench/gpu_accuracy.sh dry-run [--model PATH] [--run-dir DIR]
#       this CPU: the same steps on a tiny local model (a few steps, a few test records), result in the run folder
#
# key=value arguments after the options override the SFT config (e.g. num_epochs=1 batch_size=32).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIST="$ROOT/bench/gpu/wheels.txt"
PY="$(command -v "${PYTHON:-python3}")" || { echo "gpu_accuracy: no python at ${PYTHON:-python3}" >&2; exit 2; }

die() { echo "gpu_accuracy: $*" >&2; exit 2; }
usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

cmd="${1:-}"; [ -n "$cmd" ] || { usage; exit 2; }; shift
case "$cmd" in prepare|run|dry-run) ;; -h|--help) usage; exit 0 ;; *) die "unknown command '$cmd' (prepare, run or dry-run)" ;; esac

MODEL=""; CORPUS="ncbi-disease"; WHEELS="$ROOT/build/gpu-wheels"; RUN_DIR=""; PYV="3.12"; OVERRIDES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="${2:?--model needs a path}"; shift 2 ;;
    --corpus) CORPUS="${2:?--corpus needs a name}"; shift 2 ;;
    --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
    --run-dir) RUN_DIR="${2:?--run-dir needs a folder}"; shift 2 ;;
    --python-version) PYV="${2:?--python-version needs X.Y}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *=*) OVERRIDES+=("$1"); shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done

# requirement and import name of every wheel in the list (comments and blank lines skipped)
wheel_lines() { grep -v '^[[:space:]]*#' "$LIST" | awk 'NF>=2 {print $1, $2}'; }

if [ "$cmd" = prepare ]; then
  mkdir -p "$WHEELS"
  while read -r req mod; do
    name="${req%%==*}"
    if [ "$name" = seqeval ]; then   # published as a source archive only: build its (pure-Python) wheel here
      "$PY" -m pip wheel --no-deps --no-build-isolation -w "$WHEELS" "$req" >/dev/null
    else
      "$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
        -d "$WHEELS" "$req" >/dev/null
    fi
    echo "ok $req"
  done < <(wheel_lines)
  echo "wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1)); carry that folder and this repository to the GPU machine"
  exit 0
fi

if [ "$cmd" = run ]; then
  [ -n "$MODEL" ] || die "run needs --model PATH (a local model folder or .gguf; the Hub is not reachable offline)"
  [ -e "$MODEL" ] || die "--model $MODEL does not exist"
  command -v nvidia-smi >/dev/null || die "no nvidia-smi: this is not an NVIDIA GPU machine (use dry-run on a CPU)"
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || die "PyTorch sees no CUDA GPU"
  RUN_DIR="${RUN_DIR:-$ROOT/runs/gpu/$CORPUS}"
  DEPS="${MEDNER_GPU_DEPS:-/tmp/medner-gpu-deps}"
  mkdir -p "$DEPS"
  missing=()
  while read -r req mod; do
    if ! PYTHONPATH="$DEPS${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import $mod" 2>/dev/null; then
      name="${req%%==*}"; ver="${req##*==}"
      whl=$(ls "$WHEELS"/*.whl 2>/dev/null | grep -i -E "/${name//-/[-_]}-${ver}-" | head -1 || true)
      [ -n "$whl" ] || { missing+=("$req"); continue; }
      "$PY" -m pip install --quiet --no-index --no-deps --target "$DEPS" "$whl"
      echo "installed $req"
    fi
  done < <(wheel_lines)
  [ ${#missing[@]} -eq 0 ] || die "no wheel in $WHEELS for: ${missing[*]} (run 'bench/gpu_accuracy.sh prepare' where a package index is reachable)"
  SFT_CONFIG="$ROOT/sft/configs/qwen2.5-0.5b-qlora.yaml"
  EVAL_ARGS=("batch_size=64")
else  # dry-run: the current environment, a tiny model, a few steps and records on the CPU
  RUN_DIR="${RUN_DIR:-$ROOT/runs/gpu-dry-run/$CORPUS}"
  DEPS=""
  mkdir -p "$RUN_DIR"
  if [ -z "$MODEL" ]; then
    MODEL="$RUN_DIR/tiny-qwen2"
    [ -f "$MODEL/config.json" ] || "$PY" -m medner.cli sft make-tiny "$MODEL" >/dev/null
  fi
  SFT_CONFIG="$ROOT/sft/configs/qwen2.5-0.5b-qlora.yaml"
  OVERRIDES=("max_steps=2" "batch_size=2" "max_train_examples=8" "eval_steps=0" "dev_examples=2" "save_steps=1000" "device=cpu" "${OVERRIDES[@]}")
  EVAL_ARGS=("limit=4" "batch_size=4" "max_tokens=48")
fi

mkdir -p "$RUN_DIR"; RUN_DIR="$(cd "$RUN_DIR" && pwd)"

# medner from this checkout, whatever is installed: a package folder of links (medner.<stage> -> <stage>/),
# and python -P so the checkout's own medner/ folder does not shadow it
SHIM="$RUN_DIR/.medner-path"
rm -rf "$SHIM"; mkdir -p "$SHIM/medner"
for f in "$ROOT"/medner/*; do ln -s "$f" "$SHIM/medner/"; done
for stage in data prompts sft serve eval; do ln -sfn "$ROOT/$stage" "$SHIM/medner/$stage"; done
export PYTHONPATH="$SHIM${DEPS:+:$DEPS}${PYTHONPATH:+:$PYTHONPATH}"
medner() { "$PY" -P -m medner.cli "$@"; }

t0=$(date +%s)
medner sft train --config "$SFT_CONFIG" "model=$MODEL" "corpora=[$CORPUS]" "max_train_examples=null" "output_dir=$RUN_DIR/sft" "${OVERRIDES[@]}"
medner eval run --config "$ROOT/eval/configs/default.yaml" backend=hf "model=$MODEL" "adapter=$RUN_DIR/sft/adapter" "corpus=$CORPUS" split=test \
  "out=$RUN_DIR/eval-test" "${EVAL_ARGS[@]}"
RESULTS="$ROOT/bench/results"; [ "$cmd" = dry-run ] && RESULTS="$RUN_DIR/results"
(cd "$ROOT" && PYTHONPATH="$PYTHONPATH:$ROOT" "$PY" -P -m bench.gpu_record --corpus "$CORPUS" --sft "$RUN_DIR/sft" --eval "$RUN_DIR/eval-test" --results "$RESULTS" \
  --model "$MODEL" --total-s $(( $(date +%s) - t0 )) ${OVERRIDES[@]+--overrides "${OVERRIDES[@]}"} $([ "$cmd" = dry-run ] && echo --dry-run))
