#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU and the driver (no Rust
# needed): the binary built here with `--features cuda` is carried along.
#
#   scripts/gpu-check.sh [BINARY]        (default .gpu/imagenet-hard, or .gpu/imagenet-hard.gz)
#
# The stripped CUDA binary is about 78 MB, over a device call's 64 MiB: carry
# it gzipped (`strip` then `gzip -9`: about 21 MB); a BINARY ending in .gz is
# unpacked here first.
#
# 1. the binary finds the GPU and its libraries;
# 2. the demo build runs on the CPU and on the GPU; their scan records must
#    agree (top-1 per crop) and the logits of one crop must match closely;
#    the demo built in bf16 on the GPU must give the f32 build's hard set
#    (up to 2 of 96 close calls);
# 3. bf16 logits of one crop on the GPU against the CPU's f32;
# 4. MEMO (--tta memo-augmix / memo-zoom) on 3 demo images on both devices,
#    side by side with the plain model;
# 5. scripts/gpu_bench.py: every study model against PyTorch eager on this
#    GPU (model-only, bf16, batch $BATCH, default 128), ResNet-18/50 end to
#    end against a DataLoader pipeline, the feed on 1 and on every core, and
#    the projected GPU-hours of manifests/imagenet-hard.toml. MODELS (comma
#    list, default all) narrows it.
# Logs, JSON and summary.txt land in $OUT (or ./gpu-check-out). The check
# fails on a correctness miss; speed is reported, not judged.
set -euo pipefail
BIN=${1:-.gpu/imagenet-hard}
[ -e "$BIN" ] || BIN=$BIN.gz
if [[ "$BIN" == *.gz ]]; then
  gunzip -c "$BIN" > /tmp/imagenet-hard && chmod +x /tmp/imagenet-hard && BIN=/tmp/imagenet-hard
fi
BIN=$(realpath "$BIN")
REPO=$PWD
OUT=${OUT:-$PWD/gpu-check-out}; mkdir -p "$OUT"
SP=$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
[ -n "$SP" ] && export LD_LIBRARY_PATH=$SP/nvidia/cu13/lib:$SP/nvidia/cublas/lib:$SP/nvidia/curand/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if ldd "$BIN" | grep "not found"; then echo "missing shared libraries (see above)"; exit 1; fi
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
W=$(ls output/demo/hub/models--imagenet-hard--synthetic-resnet18/snapshots/*/model.safetensors)
for dev in cpu cuda; do
  "$BIN" predict "$REPO/tests/golden/zoom/inputs/rgb_301x207.png" --model "$W" --arch resnet18 --device "$dev" --json > "$OUT/predict-$dev.json"
done
# bf16 failing must not cost the MEMO step below: its failures are logged
# (bf16.log) and fail the check at the end.
"$BIN" predict "$REPO/tests/golden/zoom/inputs/rgb_301x207.png" --model "$W" --arch resnet18 --device cuda --dtype bf16 \
  --json > "$OUT/predict-cuda-bf16.json" 2>> "$OUT/bf16.log" || { rm -f "$OUT/predict-cuda-bf16.json"; cat "$OUT/bf16.log"; }
# 5. MEMO (test-time adaptation) on 3 demo images, CPU and GPU, both view kinds,
#    beside the plain model; per-image predictions must agree across devices.
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
if [[ "${PROFILE:-0}" == 1 ]] && command -v ncu > /dev/null; then
  ncu --clock-control none --metrics gpu__time_duration.sum --print-summary per-kernel \
    "$BIN" bench "$REPO/tests/golden/zoom/inputs" --model synthetic --arch resnet50 --device cuda --dtype bf16 \
    --batch-size "${BATCH:-128}" --batches 1 --rounds 1 --measure model > "$OUT/profile-resnet50.txt" 2>&1 \
    || echo "ncu failed: see profile-resnet50.txt"
fi
# 5. Speed beside PyTorch, every study model (its JSON under $OUT/bench/).
cd "$REPO"
python3 scripts/gpu_bench.py --bin "$BIN" --batch "${BATCH:-128}" --models "${MODELS:-all}" --out "$OUT/bench" \
  > "$OUT/speed.txt" 2> "$OUT/speed.log" || { echo "gpu_bench.py failed:"; tail -20 "$OUT/speed.log"; }
cd "$WORK"
python3 - "$WORK" "$OUT" <<'PY' | tee "$OUT/summary.txt"
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
ok = same >= crops - 2 and diff / scale < 1e-3 and memo_rows == 6 and memo_same >= 5 and bf16_ok
print("GPU CHECK", "PASSED" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
