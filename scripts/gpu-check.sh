#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU and the driver (no Rust
# needed): the binary built here by scripts/cuda-build.sh is carried along.
#
#   scripts/gpu-check.sh [BINARY]        (default .gpu/imagenet-hard, or .gpu/imagenet-hard.gz)
#
# The stripped CUDA binary is about 78 MB, over a device call's 64 MiB: carry
# it gzipped (scripts/cuda-build.sh: `strip` then `gzip -9`, about 21 MB); a
# BINARY ending in .gz is unpacked here first. Without a GPU it stops at once
# (exit 2).
#
# 1. the binary finds the GPU and its libraries (CUDA 13 and cuDNN 9 from
#    PyTorch's nvidia/ packages; cuDNN also through IMAGENET_HARD_CUDNN);
# 2. kernels: every study model on the cuDNN path (--kernels cudnn, bf16,
#    batch $BATCH, default 128) with --parity (its logits against the CPU's
#    f32 and candle's kernels on this GPU), candle's kernels for the speed,
#    and f32 at batch 8 held tightly to the CPU; scripts/kernel_verdict.py
#    prints the table, a DECISION per model and the rows for GPU_DECISIONS in
#    src/models/channels_last/mod.rs. First, so a short window still yields
#    it; ONLY_KERNELS=1 stops after it;
# 3. the demo build runs on the CPU and on the GPU; their scan records must
#    agree (top-1 per crop) and the logits of one crop must match closely,
#    on candle's kernels and on the cuDNN path; the demo built in bf16 on
#    the GPU must give the f32 build's hard set (up to 2 of 96 close calls);
# 4. bf16 logits of one crop on the GPU against the CPU's f32;
# 5. MEMO (--tta memo-augmix / memo-zoom) on 3 demo images on both devices,
#    side by side with the plain model;
# 6. scripts/gpu_bench.py: every study model against PyTorch eager on this
#    GPU, ours on both kernel paths (BENCH_KERNELS, default cudnn,candle;
#    model-only, bf16, batch $BATCH, $BATCHES batches x $ROUNDS rounds,
#    default 5 x 3: step 2's runs, reused), ResNet-50 end to end (E2E) on
#    the cuDNN path against a DataLoader pipeline, the feed on 1 and on every
#    core, and the projected GPU-hours of manifests/imagenet-hard.toml; then
#    the kernel verdict again, with the ratios to PyTorch.
# MODELS (comma list, default all) narrows steps 2 and 6. Logs, JSON,
# kernels/ (step 2), steps.txt (seconds per step) and summary.txt land in
# $OUT (or ./gpu-check-out). The check fails on a correctness miss (the
# cuDNN path's parity included); speed is reported, not judged.
set -euo pipefail
# 0. No GPU, no check: say so before anything else.
if command -v nvidia-smi > /dev/null 2>&1; then
  GPU=$(nvidia-smi -L 2> /dev/null || true); [[ "$GPU" =~ (^|$'\n')GPU\  ]] || GPU=
else  # a driver without its tools: the kernel's own list of GPUs
  GPU=$(ls /proc/driver/nvidia/gpus 2> /dev/null || true)
fi
if [ -z "$GPU" ]; then
  echo "no NVIDIA GPU here: this check needs one (see docs/gpu.md)" >&2
  exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$REPO/.gpu/imagenet-hard}
[ -e "$BIN" ] || BIN=$BIN.gz
if [[ "$BIN" == *.gz ]]; then
  gunzip -c "$BIN" > /tmp/imagenet-hard && chmod +x /tmp/imagenet-hard && BIN=/tmp/imagenet-hard
fi
BIN=$(realpath "$BIN")
OUT=${OUT:-$PWD/gpu-check-out}; mkdir -p "$OUT"; OUT=$(realpath "$OUT")
BATCH=${BATCH:-128} BATCHES=${BATCHES:-5} ROUNDS=${ROUNDS:-3}
SP=$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
# CUDA 13 and cuDNN 9 from PyTorch's wheels (cuDNN is loaded at run time by
# --kernels cudnn only).
[ -n "$SP" ] && export LD_LIBRARY_PATH=$SP/nvidia/cu13/lib:$SP/nvidia/cublas/lib:$SP/nvidia/curand/lib:$SP/nvidia/cudnn/lib:${LD_LIBRARY_PATH:-}
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1 || true)
[ -n "$GPU_NAME" ] || GPU_NAME=$(sed -n 's/^Model:[[:space:]]*//p' /proc/driver/nvidia/gpus/*/information 2> /dev/null | head -1)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if ldd "$BIN" | grep "not found"; then echo "missing shared libraries (see above)"; exit 1; fi
if [ -n "${IMAGENET_HARD_CUDNN:-}" ]; then echo "cuDNN: IMAGENET_HARD_CUDNN=$IMAGENET_HARD_CUDNN"
elif [ -e "$SP/nvidia/cudnn/lib/libcudnn.so.9" ]; then echo "cuDNN: $SP/nvidia/cudnn/lib/libcudnn.so.9"
else echo "warning: no libcudnn.so.9 in $SP/nvidia/cudnn/lib: --kernels cudnn will fail (set IMAGENET_HARD_CUDNN)"; fi
# step NAME: close the step before (its seconds into steps.txt), open NAME.
T0=$SECONDS STEP= STEP_AT=$SECONDS
step() {
  [ -z "$STEP" ] || echo "-- $STEP: $((SECONDS - STEP_AT)) s (at $((SECONDS - T0)) s)" | tee -a "$OUT/steps.txt"
  STEP=$1 STEP_AT=$SECONDS
  [ -z "$1" ] || echo "== $1"
}
VERDICT=(python3 "$REPO/scripts/kernel_verdict.py" "$OUT/kernels" --bench "$OUT/bench" --models "${MODELS:-all}")

# 2. The cuDNN kernel path against the CPU and candle's kernels.
step kernels
K=$OUT/kernels; mkdir -p "$K"; echo "$GPU_NAME" > "$K/gpu.txt"
# The study models (gpu_bench.py's MODELS) and those the check leaves out.
ARCHS=$(cd "$REPO/scripts" && python3 -c 'from gpu_bench import MODELS; print(*MODELS)')
[ "${MODELS:-all}" = all ] || ARCHS=${MODELS//,/ }
SKIP=" $(cd "$REPO/scripts" && python3 -c 'from gpu_bench import NOT_ON_PATH; print(*NOT_ON_PATH)') "
NO_CUDNN=  # the log of a cudnn run that could not load cuDNN: the others would fail alike
# kbench ARCH KERNELS DTYPE BATCH BATCHES ROUNDS [--parity]: one bench run,
# stdout to $K/ARCH-KERNELS-DTYPE.json (removed if it failed), stderr to .log.
kbench() {
  local f=$K/$1-$2-$3 t=$SECONDS rc=0
  if [ "$2" = cudnn ] && [ -n "$NO_CUDNN" ]; then
    { cat "$NO_CUDNN"; echo "gpu-check: not run: cuDNN did not load for $(basename "$NO_CUDNN" .log)"; } > "$f.log"
    rm -f "$f.json"; echo "   $1 $2 $3: not run (cuDNN did not load)"; return 0
  fi
  "$BIN" bench "$REPO/tests/golden/zoom/inputs" --model synthetic --arch "$1" --device cuda --kernels "$2" \
    --dtype "$3" --measure model --batch-size "$4" --batches "$5" --rounds "$6" "${@:7}" > "$f.json" 2> "$f.log" || rc=$?
  if [ "$rc" = 0 ]; then
    echo "   $1 $2 $3: $(sed -n 's/.*"crops_per_s": *\([0-9]*\).*/\1/p' "$f.json" | head -1) crops/s ($((SECONDS - t)) s)"
  else  # the verdict quotes the log's tail: say how it ended there too
    [ "$rc" -gt 128 ] && echo "gpu-check: exit $rc (killed by signal $((rc - 128)))" >> "$f.log" \
      || echo "gpu-check: exit $rc" >> "$f.log"
    rm -f "$f.json"; echo "   $1 $2 $3: FAILED: $(tail -n 2 "$f.log" | tr '\n' ' ')"
    if [ "$2" = cudnn ] && grep -q libcudnn "$f.log"; then NO_CUDNN=$f.log; fi
  fi
}
for a in $ARCHS; do
  case "$SKIP" in
    *" $a "*) echo "   $a: not in the kernel check (auto keeps candle's kernels)"; continue ;;
  esac
  kbench "$a" cudnn bf16 "$BATCH" "$BATCHES" "$ROUNDS" --parity
  kbench "$a" candle bf16 "$BATCH" "$BATCHES" "$ROUNDS"
  kbench "$a" cudnn f32 8 1 1 --parity
done
KOK=0; "${VERDICT[@]}" > "$K/verdict.txt" || KOK=$?
cat "$K/verdict.txt"
if [ "${ONLY_KERNELS:-0}" = 1 ]; then step ""; exit "$KOK"; fi

step demo
WORK=$(mktemp -d); cd "$WORK"
for dev in cpu cuda; do
  rm -rf output
  "$BIN" build --device "$dev" > "$OUT/bounds-$dev.md" 2> "$OUT/build-$dev.log" || { cat "$OUT/build-$dev.log"; exit 1; }
  cp output/demo/scan/units/u00000.stats.json "$WORK/stats-$dev.json"
  cp output/demo/scan/units/u00000.parquet "$WORK/records-$dev.parquet"
  cp output/demo/select/selection.json "$WORK/selection-$dev.json"
done
# The same demo in bf16 on the GPU: its hard set must be the f32 build's
# (up to 2 close calls).
sed -e 's#output_dir = "output/demo"#output_dir = "output/demo-bf16"#' "$REPO/manifests/demo.toml" > demo-bf16.toml
printf '\n[scan]\ndtype = "bf16"\n' >> demo-bf16.toml
HF_HUB_CACHE=$WORK/output/demo/hub HF_HUB_OFFLINE=1 "$BIN" build demo-bf16.toml --device cuda:0 \
  > "$OUT/bounds-cuda-bf16.md" 2> "$OUT/build-cuda-bf16.log" \
  && cp output/demo-bf16/select/selection.json "$WORK/selection-cuda-bf16.json" || cat "$OUT/build-cuda-bf16.log"
step predict
W=$(ls output/demo/hub/models--imagenet-hard--synthetic-resnet18/snapshots/*/model.safetensors)
for dev in cpu cuda; do
  "$BIN" predict "$REPO/tests/golden/zoom/inputs/rgb_301x207.png" --model "$W" --arch resnet18 --device "$dev" \
    --kernels candle --json > "$OUT/predict-$dev.json"
done
# The demo's trained ResNet-18 on the cuDNN path in f32: the CPU's logits
# (its failure is logged in cudnn.log and fails the check at the end).
"$BIN" predict "$REPO/tests/golden/zoom/inputs/rgb_301x207.png" --model "$W" --arch resnet18 --device cuda \
  --kernels cudnn --json > "$OUT/predict-cuda-cudnn.json" 2>> "$OUT/cudnn.log" \
  || { rm -f "$OUT/predict-cuda-cudnn.json"; cat "$OUT/cudnn.log"; }
# bf16 failing must not cost the MEMO step below: its failures are logged
# (bf16.log) and fail the check at the end.
"$BIN" predict "$REPO/tests/golden/zoom/inputs/rgb_301x207.png" --model "$W" --arch resnet18 --device cuda --dtype bf16 \
  --json > "$OUT/predict-cuda-bf16.json" 2>> "$OUT/bf16.log" || { rm -f "$OUT/predict-cuda-bf16.json"; cat "$OUT/bf16.log"; }
# 5. MEMO (test-time adaptation) on 3 demo images, CPU and GPU, both view kinds,
#    beside the plain model; per-image predictions must agree across devices.
step memo
for dev in cpu cuda; do
  "$BIN" eval output/demo/dataset --model "$W" --arch resnet18 --device "$dev" --limit 3 \
    --json "$OUT/eval-none-$dev.json" > /dev/null 2>> "$OUT/memo.log" || { cat "$OUT/memo.log"; exit 1; }
  for tta in memo-augmix memo-zoom; do
    "$BIN" eval output/demo/dataset --model "$W" --arch resnet18 --device "$dev" --limit 3 --tta "$tta" \
      --json "$OUT/eval-$tta-$dev.json" --per-sample "$OUT/eval-$tta-$dev.csv" > /dev/null 2>> "$OUT/memo.log" \
      || { cat "$OUT/memo.log"; exit 1; }
  done
  "$BIN" eval --compare "$OUT/eval-none-$dev.json" "$OUT/eval-memo-augmix-$dev.json" "$OUT/eval-memo-zoom-$dev.json" \
    > "$OUT/memo-$dev.md"
done
# Optional (PROFILE=1, a minute or two more): where one bf16 ResNet-50 batch
# spends its GPU time, kernel by kernel (ncu, clocks left alone).
# PROFILE_KERNELS (default cudnn) picks the path.
if [[ "${PROFILE:-0}" == 1 ]] && command -v ncu > /dev/null; then
  step profile
  ncu --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel \
    "$BIN" bench "$REPO/tests/golden/zoom/inputs" --model synthetic --arch resnet50 --device cuda --dtype bf16 \
    --kernels "${PROFILE_KERNELS:-cudnn}" --batch-size "$BATCH" --batches 1 --rounds 1 --measure model \
    > "$OUT/profile-resnet50.txt" 2>&1 || echo "ncu failed: see profile-resnet50.txt"
fi
# 6. Speed beside PyTorch, every study model, both kernel paths (its JSON
#    under $OUT/bench/); few batches, to stay within minutes, and our
#    model-only runs of step 2 reused rather than timed again.
step bench
cd "$REPO"
python3 scripts/gpu_bench.py --bin "$BIN" --batch "$BATCH" --batches "$BATCHES" --rounds "$ROUNDS" \
  --models "${MODELS:-all}" --kernels "${BENCH_KERNELS:-cudnn,candle}" --e2e "${E2E:-resnet50}" --reuse "$K" --out "$OUT/bench" \
  > "$OUT/speed.txt" 2> "$OUT/speed.log" || { echo "gpu_bench.py failed:"; tail -20 "$OUT/speed.log"; }
# The kernel verdict again, now with the ratios to PyTorch eager.
step verdict
KOK=0; "${VERDICT[@]}" > "$K/verdict.txt" || KOK=$?
step ""
echo "gpu-check: $((SECONDS - T0)) s in all" | tee -a "$OUT/steps.txt"
cd "$WORK"
python3 - "$WORK" "$OUT" "$KOK" <<'PY' | tee "$OUT/summary.txt"
import json, sys
work, out = sys.argv[1], sys.argv[2]
try:  # per-crop agreement when pyarrow is there, else the selections
    import pyarrow.parquet as pq
    a, b = (pq.read_table(f"{work}/records-{d}.parquet").to_pylist() for d in ("cpu", "cuda"))
    crops = sum(len(r["pred"]) for r in a)
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra["pred"], rb["pred"]))
except ImportError:
    a, b = (json.load(open(f"{work}/selection-{d}.json")) for d in ("cpu", "cuda"))
    crops, same = 1, int(a == b)
pa, pb = (json.load(open(f"{out}/predict-{d}.json"))["top"] for d in ("cpu", "cuda"))
diff = max(abs(x["logit"] - y["logit"]) for x, y in zip(pa, pb))
scale = max(abs(x["logit"]) for x in pa)
sa, sb = (json.load(open(f"{work}/stats-{d}.json")) for d in ("cpu", "cuda"))
print(f"top-1 agreement cpu vs cuda: {same}/{crops} crops")
print(f"top-5 logits max |cpu - cuda| = {diff:.3g} (max |logit| {scale:.3g}, relative {diff/scale:.2e}); same classes: {[x['index'] for x in pa] == [x['index'] for x in pb]}")
for d, s in (("cpu", sa), ("cuda", sb)):
    print(f"{d}: {s['forward_passes']} crops in {s['seconds']:.2f}s = {s['forward_passes']/s['seconds']:.1f} crops/s")
import os
bf16_ok = True
try:
    f32_hard = json.load(open(f"{work}/selection-cuda.json"))
    bf16_hard = json.load(open(f"{work}/selection-cuda-bf16.json"))
    rows = lambda sel: sorted((h["origin"], h["row"]) for h in sel.get("hard", []))
    # The demo's model is trained: bf16 may flip an image whose best view
    # is a close call, so a difference of up to 2 of its 96 images passes.
    moved = set(rows(f32_hard)) ^ set(rows(bf16_hard))
    print(f"demo hard set, bf16 vs f32 on cuda: {len(rows(bf16_hard))} vs {len(rows(f32_hard))} images, {len(moved)} differ")
    bf16_ok = len(moved) <= 2
except (OSError, ValueError) as e:
    print(f"demo build in bf16 on cuda: FAILED ({e}; see build-cuda-bf16.log)")
    bf16_ok = False
if os.path.exists(f"{out}/predict-cuda-bf16.json"):
    ph = json.load(open(f"{out}/predict-cuda-bf16.json"))["top"]
    half = max(abs(x["logit"] - y["logit"]) for x, y in zip(pa, ph)) / scale
    same_top1 = pa[0]["index"] == ph[0]["index"]
    print(f"bf16 on cuda vs f32 on cpu: top-5 logits relative diff {half:.2e}; same top-1: {same_top1}")
    bf16_ok = bf16_ok and half < 3e-2 and same_top1
else:
    print("bf16 predict on cuda: FAILED (see bf16.log)")
    bf16_ok = False
cudnn_ok = os.path.exists(f"{out}/predict-cuda-cudnn.json")
if cudnn_ok:
    pc = json.load(open(f"{out}/predict-cuda-cudnn.json"))["top"]
    rel = max(abs(x["logit"] - y["logit"]) for x, y in zip(pa, pc)) / scale
    same_classes = [x["index"] for x in pa] == [x["index"] for x in pc]
    print(f"cuDNN path (f32) on cuda vs cpu: top-5 logits relative diff {rel:.2e}; same classes: {same_classes}")
    cudnn_ok = rel < 1e-3 and same_classes
else:
    print("predict on cuda with --kernels cudnn: FAILED (see cudnn.log)")
import csv
memo_same = memo_rows = 0
for tta in ("memo-augmix", "memo-zoom"):
    a, b = ([r["top5"] for r in csv.DictReader(open(f"{out}/eval-{tta}-{d}.csv"))] for d in ("cpu", "cuda"))
    memo_rows += len(a)
    memo_same += sum(x == y for x, y in zip(a, b))
print(f"MEMO top-5 agreement cpu vs cuda: {memo_same}/{memo_rows} images")
for d in ("cpu", "cuda"):
    print(f"MEMO side by side on {d}:\n" + open(f"{out}/memo-{d}.md").read())
print("\nSpeed (scripts/gpu_bench.py):\n" + (open(f"{out}/speed.txt").read() if os.path.exists(f"{out}/speed.txt") else "missing: see speed.log"))
kernels_ok = sys.argv[3] == "0"
print("\nKernels (scripts/kernel_verdict.py" + ("" if kernels_ok else ": a model failed parity or a run failed") + "):\n"
      + open(f"{out}/kernels/verdict.txt").read())
print("Seconds per step:\n" + open(f"{out}/steps.txt").read())
ok = same >= crops - 2 and diff / scale < 1e-3 and memo_rows == 6 and memo_same >= 5 and bf16_ok and cudnn_ok and kernels_ok
print("GPU CHECK", "PASSED" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
