#!/usr/bin/env bash
# One prepared GPU check, under 9 minutes on one CUDA GPU, everything under one output folder:
#   1. install what the machine lacks from a folder of wheels (no network needed),
#   2. train student-tiny for a few hundred steps and student-s for 20 steps at 512x1024 on CUDA
#      (samples/s and peak CUDA memory from metrics.jsonl),
#   3. bench every CUDA row (FP32, TF32, FP16, BF16, compiled with CUDA graphs, torchao INT8/FP8)
#      of student-s and teacher-l at 512x1024, batch 1 and 8; the Grounded-SAM2 -> student-s pair;
#      the torchao AP drop on the trained student-tiny,
#   4. summary.md / summary.json from whatever finished.
# Every step runs under its own time limit, so one slow step cannot eat the others; a bench step
# stopped by its limit still leaves the rows it measured (latency.partial.jsonl).
#
# usage: scripts/gpu_check.sh [--out DIR] [--wheels DIR] [--python PY] [--grounded NAME_OR_DIR] [--dry-run]
#   --out       output folder (default gpu_check_<date>)
#   --wheels    folder of wheels for what is missing (pip install --no-index --find-links)
#   --python    interpreter with torch (default: python3)
#   --grounded  the pair's teacher: grounded-sam2 (published configs, random weights) or a weights directory
#   --dry-run   the whole script on the CPU with tiny models and sizes, in a minute or two: checks the
#               script itself (installs nothing; reports what it would install)
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="gpu_check_$(date +%Y%m%d_%H%M%S)"
WHEELS=""
PY="python3"
GROUNDED="grounded-sam2"
GROUNDED_SET=0
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --grounded) GROUNDED="$2"; GROUNDED_SET=1; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
: > "$OUT/steps.tsv"
START=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# -- settings: the real check, or tiny ones for the dry run ----------------------------------
if [ "$DRY" = 1 ]; then
  DEVICE=cpu; THREADS=1; SIZE="64x96"; SIZE_LIST="[64,96]"; TINY_SIZE="[64,96]"; BATCHES="1,2"; ITERS=2; WARMUP=0
  TINY_STEPS=3; TINY_BATCH=2; S_STEPS=2; S_BATCH=1; STUDENT=student-tiny; TEACHER=teacher-tiny
  COMPILE="--no-compile"; SYNTH="--set data.synth.num_train=8 --set data.synth.num_val=4 --set data.synth.image_size=[64,96]"
  GROUNDED_SIZE="[64,96]"; PARITY=4; CPU_ROWS=true
  if [ "$GROUNDED_SET" = 0 ]; then GROUNDED=""; fi  # the published teacher takes minutes on a CPU
  LIMIT_TRAIN_TINY=120; LIMIT_TRAIN_S=120; LIMIT_EAGER=180; LIMIT_PAIR=180; LIMIT_COMPILED=180; LIMIT_TORCHAO=180
  LIMIT_PARITY=180
else
  DEVICE=cuda; THREADS=8; SIZE="512x1024"; SIZE_LIST="[512,1024]"; TINY_SIZE="[192,256]"; BATCHES="1,8"; ITERS=20; WARMUP=3
  TINY_STEPS=300; TINY_BATCH=8; S_STEPS=20; S_BATCH=4; STUDENT=student-s; TEACHER=teacher-l
  COMPILE="--compile"; SYNTH="--set data.synth.num_train=200 --set data.synth.num_val=64"
  GROUNDED_SIZE="[800,1336]"; PARITY=64; CPU_ROWS=false
  # seconds per step: 500 s in all, plus at most 5 s each to stop a step that ignores SIGTERM (535 s)
  LIMIT_TRAIN_TINY=70; LIMIT_TRAIN_S=55; LIMIT_EAGER=75; LIMIT_PAIR=90; LIMIT_COMPILED=90; LIMIT_TORCHAO=90
  LIMIT_PARITY=30
fi
DATA="--set data.root=$OUT/data $SYNTH"

# -- 1. environment and install ---------------------------------------------------------------
{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(hostname)"; echo "repo: $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt" | tee -a "$LOG"
if ! "$PY" -c 'import torch' 2>/dev/null; then
  say "error: $PY has no torch; pass --python with the interpreter that has the machine's CUDA torch"; exit 2
fi
if [ "$DRY" = 0 ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  say "error: no CUDA device visible to torch; run with --dry-run to check the script on a CPU"; exit 2
fi

# import name -> distribution; torch is never installed here (the machine's CUDA build stays)
NEEDED="numpy:numpy PIL:pillow yaml:pyyaml pydantic:pydantic typer:typer rich:rich pycocotools:pycocotools
matplotlib:matplotlib scipy:scipy transformers:transformers safetensors:safetensors onnx:onnx
onnxruntime:onnxruntime onnxscript:onnxscript torchao:torchao"
missing=""
for pair in $NEEDED; do
  "$PY" -c "import ${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"
done
say "missing:${missing:- nothing}"
if [ -n "$missing" ]; then
  if [ "$DRY" = 1 ]; then
    say "dry run: would install${missing} from ${WHEELS:-<no --wheels given>}"
  elif [ -z "$WHEELS" ]; then
    say "error: missing${missing}; pass --wheels DIR with their wheels"; exit 2
  else
    "$PY" -m pip install --no-index --find-links "$WHEELS" $missing 2>&1 | tee -a "$LOG"
    [ "${PIPESTATUS[0]}" = 0 ] || { say "error: pip could not install${missing} from $WHEELS"; exit 2; }
  fi
fi
# the checkout this script belongs to is what runs (not an installed copy), and the project itself
# is not pip-installed: its torch pin must not replace the machine's CUDA torch
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
SSKD=("$PY" -m sskd_deploy)

# -- steps ---------------------------------------------------------------------------------
# run_step NAME LIMIT_S CMD...: output to NAME.log, status and seconds to steps.tsv; never stops the script
run_step() {
  local name="$1" limit="$2"; shift 2
  local t0=$(date +%s) status
  say "$name (limit ${limit} s): $*"
  timeout --signal=TERM --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  status=$?
  case $status in 0) status=ok ;; 124|137) status="timed out" ;; *) status="failed ($status)" ;; esac
  printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" >> "$OUT/steps.tsv"
  say "$name: $status in $(( $(date +%s) - t0 )) s"
  [ "$status" = ok ] || tail -n 5 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$LOG"
}

COMMON=(--set "train.device=$DEVICE" --set train.eval_every=0 $DATA)
# student-tiny starts from its shipped encoder where this checkout has it (a better AP for the parity
# step), else from random weights (the speed is the same)
TINY_WEIGHTS=null
"$PY" -c "from sskd_deploy.weights import shipped_path; shipped_path('student', 'student-tiny')" >/dev/null 2>&1 \
  && TINY_WEIGHTS=shipped
# 2. training: the supervised stage, so every sample is one image
run_step train_tiny "$LIMIT_TRAIN_TINY" "${SSKD[@]}" train --stages supervised "${COMMON[@]}" \
  --set "run.out_dir=$OUT/train_tiny" --set train.student=student-tiny --set "train.student_weights=$TINY_WEIGHTS" \
  --set "train.input_size=$TINY_SIZE" \
  --set "train.supervised={steps: $TINY_STEPS, batch_size: $TINY_BATCH, lr: 0.001}"
run_step train_s "$LIMIT_TRAIN_S" "${SSKD[@]}" train --stages supervised "${COMMON[@]}" \
  --set "run.out_dir=$OUT/train_s" --set "train.student=$STUDENT" --set train.student_weights=null \
  --set "train.input_size=$SIZE_LIST" --set "train.supervised={steps: $S_STEPS, batch_size: $S_BATCH, lr: 0.0001}"

# 3. bench; each step its own folder. The eager rows first (cheap), then what compiles.
bench() {  # bench NAME LIMIT ARGS...
  local name="$1" limit="$2"; shift 2
  run_step "bench_$name" "$limit" "${SSKD[@]}" bench --out "$OUT/bench_$name/latency.json" \
    --set "run.out_dir=$OUT/bench_run" $DATA --iters "$ITERS" --warmup "$WARMUP" --threads "$THREADS" --set "bench.cpu=$CPU_ROWS" \
    --set bench.onnx=false --set bench.keep_going=true "$@"
}
bench eager "$LIMIT_EAGER" --model "$STUDENT" --model "$TEACHER" --input-size "$SIZE" --batch "$BATCHES" \
  --no-pairs --no-compile --set bench.torchao=off --roofline
if [ -n "$GROUNDED" ]; then
  bench pair "$LIMIT_PAIR" --pair "$GROUNDED:$STUDENT" --input-size "$SIZE" --batch 1 --no-compile --no-roofline \
    --set bench.torchao=off --set "bench.grounded_input_size=$GROUNDED_SIZE"
else
  say "bench_pair: skipped (dry run without --grounded DIR: the published teacher takes minutes on a CPU)"
  printf 'bench_pair\tskipped\t0\n' >> "$OUT/steps.tsv"
fi
bench compiled "$LIMIT_COMPILED" --model "$STUDENT" --model "$TEACHER" --input-size "$SIZE" --batch "$BATCHES" \
  --no-pairs $COMPILE --no-roofline --set bench.gpu_dtypes=[] --set bench.torchao=off
bench torchao "$LIMIT_TORCHAO" --model "$STUDENT" --model "$TEACHER" --input-size "$SIZE" --batch "$BATCHES" \
  --no-pairs $COMPILE --no-roofline --set bench.gpu_dtypes=[] --set bench.compile_dtypes=[] --set bench.torchao=on \
  --set "bench.parity_images=$PARITY"
# the AP drop that means something: torchao against FP32 on the student-tiny trained above
TINY_CKPT="$OUT/train_tiny/train/supervised/model.safetensors"
if [ -f "$TINY_CKPT" ]; then
  bench parity "$LIMIT_PARITY" --model "$TINY_CKPT" --batch 1 --no-pairs --no-compile --no-roofline \
    --set bench.gpu_dtypes=[] --set bench.torchao=on --set "bench.parity_images=$PARITY"
else
  say "bench_parity: skipped (no trained student-tiny at $TINY_CKPT)"
  printf 'bench_parity\tskipped\t0\n' >> "$OUT/steps.tsv"
fi

# 4. summary
"$PY" -m sskd_deploy.bench.gpu_check "$OUT" 2>&1 | tee -a "$LOG"
say "done in $(( $(date +%s) - START )) s; everything is under $OUT"
