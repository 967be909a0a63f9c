#!/usr/bin/env bash
# Is the demo's output byte-identical to an earlier commit's? For refactors
# that must not change what the tool writes. Builds REV in a git worktree
# (sharing this checkout's target directory, so only the crate recompiles),
# runs `build` (the embedded demo) with both binaries in fresh folders and
# compares every file under output/demo/ and stdout. The scan's measured
# seconds (`scan/units/*.stats.json` "seconds") are the one field allowed to
# differ.
#
#   scripts/demo-identical.sh daf7be6
set -euo pipefail
rev=${1:?usage: scripts/demo-identical.sh REV}
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
git -C "$root" worktree add --detach "$work/base" "$rev" >/dev/null
(cd "$work/base" && cargo build --release --quiet)
cp "$CARGO_TARGET_DIR/release/imagenet-hard" "$work/base.bin"
(cd "$root" && cargo build --release --quiet)
cp "$CARGO_TARGET_DIR/release/imagenet-hard" "$work/head.bin"
for side in base head; do
    mkdir "$work/$side.run"
    (cd "$work/$side.run" && "$work/$side.bin" build >stdout.txt 2>stderr.txt)
    # The one measured value: wall-clock seconds of each unit.
    find "$work/$side.run/output/demo/scan" -name '*.stats.json' \
        -exec sed -i -E 's/"seconds": [0-9.e+-]+/"seconds": 0/' {} +
done
files=$(cd "$work/head.run/output/demo" && find . -type f | wc -l)
if diff -r "$work/base.run/output/demo" "$work/head.run/output/demo" &&
    diff "$work/base.run/stdout.txt" "$work/head.run/stdout.txt"; then
    echo "identical: $files files under output/demo/ and stdout ($rev vs $(git -C "$root" rev-parse --short HEAD))"
else
    echo "the demo's output differs from $rev (above)" >&2
    exit 1
fi
