#!/usr/bin/env python3
"""The scan modes side by side on the demo's scenes: forward passes and FLOPs
of exhaustive, first-hit and curate, measured from the runs' own records and
stats, and whether their hard sets agree.

  cargo build --release
  python3 scripts/modes_bench.py [--bin target/release/imagenet-hard] [--json out.json]
  (needs pyarrow)

Models: the demo's trained shapes-cnn (0.046 GMAC a pass, solves most
scenes) and the random-weight ResNet-18 from the demo's Hub cache (1.82
GMAC, solves none): a cheap model that finds the objects beside a costly one
that has to be ruled out. The curate order is learned from an exhaustive scan
of a 24-image sample of the source (`limit = 24`), as a maintainer would run
before a rebuild. FLOPs: 2 x each architecture's published multiply-adds per
pass (the `gmacs` of src/models/arch.rs) x the passes it ran.
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pyarrow.parquet as pq

REPO = pathlib.Path(__file__).resolve().parent.parent
GMACS = {"shapes-cnn": 0.046, "resnet18": 1.82}
NOT_TRIED = 65535


def manifest(demo: str, run: str, mode: str, extra: str = "", limit: str = "") -> str:
    text = demo.replace('output_dir = "output/demo"', f'output_dir = "{run}"')
    text = text.replace('terms = "', f'{limit}terms = "', 1)
    text += """
[[model]]
name = "resnet18"
architecture = "resnet18"
hub = { repo = "imagenet-hard/synthetic-resnet18", revision = "main", files = ["model.safetensors"] }

[scan]
mode = "%s"
%s""" % (mode, extra)
    return text


def measure(run: pathlib.Path) -> dict:
    tried = {}
    hard = None
    for f in sorted((run / "scan" / "units").glob("u*.parquet")):
        t = pq.read_table(f).to_pylist()
        for r in t:
            tried[r["model"]] = tried.get(r["model"], 0) + sum(p != NOT_TRIED for p in r["pred"])
    passes = sum(
        json.load(open(f))["forward_passes"] for f in (run / "scan" / "units").glob("u*.stats.json")
    )
    sel = json.load(open(run / "select" / "selection.json"))
    hard = sorted((h["origin"], h["row"]) for h in sel["hard"])
    flops = sum(2e9 * GMACS[m] * n for m, n in tried.items())
    return {"tried": tried, "forward_passes": passes, "flops": flops, "hard": hard}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "imagenet-hard"))
    ap.add_argument("--json")
    args = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="modes-bench-"))
    try:
        run = lambda *a, env=None: subprocess.run(
            [args.bin, *a], cwd=work, check=True, stdout=subprocess.DEVNULL, env=env
        )
        print("building the demo (trains its classifier once) ...", file=sys.stderr)
        run("build")
        env = dict(os.environ, HF_HUB_CACHE=str(work / "output" / "demo" / "hub"), HF_HUB_OFFLINE="1")
        demo = (REPO / "manifests" / "demo.toml").read_text()
        runs = [
            ("sample", "exhaustive", "", "limit = 24\n"),
            ("exhaustive", "exhaustive", "", ""),
            ("first-hit", "first-hit", "", ""),
            ("curate", "curate", 'curate_from = ["sample"]\n', ""),
        ]
        for name, mode, extra, limit in runs:
            (work / f"{name}.toml").write_text(manifest(demo, name, mode, extra, limit))
            print(f"{name} ...", file=sys.stderr)
            run("build", f"{name}.toml", "--device", "cpu", env=env)
        res = {name: measure(work / name) for name, *_ in runs[1:]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ex = res["exhaustive"]
    print("mode\tforward passes\tshapes-cnn tries\tresnet18 tries\tGFLOP\tpasses saved\tFLOPs saved\thard\tsame hard set")
    for name, r in res.items():
        print(
            f"{name}\t{r['forward_passes']}\t{r['tried'].get('shapes-cnn', 0)}\t{r['tried'].get('resnet18', 0)}"
            f"\t{r['flops'] / 1e9:.0f}\t{ex['forward_passes'] / r['forward_passes']:.1f}x"
            f"\t{ex['flops'] / r['flops']:.1f}x\t{len(r['hard'])}\t{r['hard'] == ex['hard']}"
        )
    fh, cu = res["first-hit"], res["curate"]
    print(f"curate vs first-hit: {fh['forward_passes'] / cu['forward_passes']:.1f}x fewer passes, "
          f"{fh['flops'] / cu['flops']:.1f}x fewer FLOPs")
    same = all(r["hard"] == ex["hard"] for r in res.values())
    if args.json:
        for r in res.values():
            r["hard"] = len(r["hard"])
        json.dump(res, open(args.json, "w"), indent=2)
    if not same:
        sys.exit("the hard sets differ")


if __name__ == "__main__":
    main()
