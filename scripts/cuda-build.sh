#!/usr/bin/env bash
# Build the CUDA binary on this machine (no GPU needed) and pack it for a GPU
# machine, checking what can be checked without one.
#
#   scripts/cuda-build.sh [CARGO ARGS...]     (CARGO_TARGET_DIR honoured, default target/)
#
# Leaves .gpu/imagenet-hard (stripped) and .gpu/imagenet-hard.gz (gzip -9:
# what a device call carries to scripts/gpu-check.sh). Fails unless
#   - the binary does not need libcudnn (NEEDED): the cuDNN path loads
#     libcudnn.so.9 at run time, so the CUDA binary starts without it;
#   - it starts here: `--version` and `models` exit 0, with the toolkit's
#     lib64 and its stub libcuda on LD_LIBRARY_PATH (for this check only:
#     the stub answers every call with CUDA_ERROR_NO_DEVICE);
#   - `predict --device cuda --kernels cudnn` fails cleanly here: exit 1
#     with its error on stderr, not a panic (101) or a signal.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Resolved before the cd below, so a relative CARGO_TARGET_DIR means what the caller meant.
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")
cd "$ROOT"
[ -f .cuda/env.sh ] || scripts/cuda-toolchain.sh
# shellcheck source=/dev/null
source .cuda/env.sh
CARGO_TARGET_DIR=$TARGET cargo build --release --features cuda "$@"

mkdir -p .gpu
BIN=.gpu/imagenet-hard
cp "$TARGET/release/imagenet-hard" "$BIN"
strip "$BIN"
gzip -9 -k -f "$BIN"

# The dynamic section: no libcudnn.
NEEDED=$(readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
echo "NEEDED: $(echo $NEEDED)"
if grep -qi cudnn <<< "$NEEDED"; then
  echo "FAIL: $BIN lists libcudnn in NEEDED: the CUDA binary must start without cuDNN (load it with dlopen)" >&2
  exit 1
fi

TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
# It starts without a GPU (the stub libcuda stands in for the driver's).
export LD_LIBRARY_PATH=$CUDA_ROOT/lib64:$CUDA_ROOT/lib64/stubs
for args in --version models; do
  "$BIN" $args > "$TMP/out" 2>&1 || { cat "$TMP/out"; echo "FAIL: \`$BIN $args\` does not start here" >&2; exit 1; }
done
echo "starts: $("$BIN" --version); --version and models exit 0"

# `--kernels cudnn` on a machine with no GPU: a clean error, exit 1.
printf '\002\000\000\000\000\000\000\000{}' > "$TMP/w.safetensors"   # a valid, empty safetensors file
rc=0
"$BIN" predict tests/golden/zoom/inputs/rgb_301x207.png --model "$TMP/w.safetensors" --arch resnet18 \
  --device cuda --kernels cudnn > /dev/null 2> "$TMP/err" || rc=$?
echo "predict --device cuda --kernels cudnn without a GPU: exit $rc: $(cat "$TMP/err")"
if [ "$rc" != 1 ] || [ ! -s "$TMP/err" ]; then
  echo "FAIL: expected exit 1 with an error on stderr (101 is a panic, over 128 a signal)" >&2
  exit 1
fi
ls -l "$BIN" "$BIN.gz" | awk '{printf "%s: %.1f MB\n", $NF, $5 / 1e6}'
# A device call carries 64 MiB in all.
[ "$(stat -c %s "$BIN.gz")" -lt $((60 << 20)) ] || echo "warning: $BIN.gz is over 60 MiB: too big to carry" >&2
echo "ready: carry $BIN.gz to the GPU machine and run scripts/gpu-check.sh $BIN.gz there"
