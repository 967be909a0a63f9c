#!/usr/bin/env python3
"""Peak memory and time of zooming images of extreme shapes, binary against
binary (e.g. before and after a change): the benchmark behind "memory is
bounded for every image". Not a test: it reports, it does not judge.

  pip install pillow
  python3 scripts/zoom_memory.py --bin target/release/imagenet-hard [--before OLD_BINARY]

For each generated PNG (1 x 6000, 6000 x 1, 2 x 3000, 3000 x 2, 1 x 1,
5 x 7, a 500 x 375 photo-sized one, and the largest the default decode
limits allow, 32768 x 5461) it runs, in a fresh process each:
  one   `imagenet-hard zoom IMAGE -t r1c1s1024`: one transform at the
        paper's largest scale;
  grid  `imagenet-hard bench DIR --measure feed --threads 1 --rounds 1`:
        all 324 transforms (new binary only: the old one needs the whole
        resized image of every scale);
and prints the peak RSS (the child's ru_maxrss) and wall time. A run that
needs more than --limit-gb of address space is stopped there (ulimit -v)
and shown as over the limit.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

SHAPES = [(1, 6000), (6000, 1), (2, 3000), (3000, 2), (1, 1), (5, 7), (500, 375), (32768, 5461)]


def make(folder, w, h):
    p = folder / f"img_{w}x{h}.png"
    if w * h > 10_000_000:  # a flat image: the size, not the content, is the point
        Image.new("RGB", (w, h), (90, 120, 150)).save(p, compress_level=1)
    else:
        img = Image.effect_noise((w, h), 60).convert("RGB")
        img.save(p)
    return p


def measure(cmd, limit_gb):
    """Peak RSS in MiB, seconds, and exit code of one child."""
    def limit():
        b = int(limit_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (b, b))

    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=limit)
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, seconds, p.returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/imagenet-hard")
    ap.add_argument("--before", help="an older binary to set beside --bin")
    ap.add_argument("--limit-gb", type=float, default=16.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="zoom-memory-"))
    binaries = [("before", args.before)] if args.before else []
    binaries.append(("after", args.bin))
    print(f"{'image':>14} {'run':>5} {'binary':>7} {'peak RSS MiB':>13} {'seconds':>8}  note")
    for w, h in SHAPES:
        img = make(tmp, w, h)
        single = tmp / f"dir_{w}x{h}"
        single.mkdir()
        os.link(img, single / img.name)
        for name, binary in binaries:
            runs = [("one", [binary, "zoom", str(img), "-t", "r1c1s1024", "-o", str(tmp / "out.png")])]
            if name == "after":
                runs.append(("grid", [binary, "bench", str(single), "--model", "synthetic", "--arch", "resnet18",
                                      "--device", "cpu", "--measure", "feed", "--threads", "1", "--rounds", "1"]))
            for run, cmd in runs:
                rss, secs, code = measure(cmd, args.limit_gb)
                note = "ok" if code == 0 else f"exit {code} (over the {args.limit_gb:g} GB limit or refused)"
                print(f"{w:>6} x {h:<6} {run:>5} {name:>7} {rss:13.0f} {secs:8.2f}  {note}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
