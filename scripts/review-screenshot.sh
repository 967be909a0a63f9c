#!/usr/bin/env bash
# Regenerate docs/review.png: the review page on the demo's run, as a
# 1400x900 headless-Chromium screenshot (needs chromium; the demo is built
# first if output/demo/ has no selection).
#
#   scripts/review-screenshot.sh [BINARY]
set -euo pipefail
root=$(git rev-parse --show-toplevel)
bin=${1:-$root/target/release/imagenet-hard}
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
"$bin" --quiet build >/dev/null
"$bin" review --port 0 >url.txt 2>review.log &
server=$!
for _ in $(seq 50); do [[ -s url.txt ]] && break; sleep 0.2; done
url=$(head -1 url.txt)
[[ $url == http://127.0.0.1:* ]] || { echo "the review server did not start:" >&2; cat review.log >&2; exit 1; }
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1400,900 --virtual-time-budget=4000 \
    --screenshot="$root/docs/review.png" "$url" 2>/dev/null
echo "wrote docs/review.png from $url"
