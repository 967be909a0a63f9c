#!/usr/bin/env python3
"""Our scan beside the paper's Python pipeline, on the same machine, images,
weights, batch size and thread count; prints ours/reference ratios and writes
them as JSON.

  pip install torch torchvision pillow pyarrow numpy      # CPU wheels are enough
  cargo build --release
  python3 scripts/bench.py --arch resnet50 --images 2 --runs 3

Measured, each as the median of --runs; every run times ours and then the
reference back to back, so drift of the machine between runs hits both:
  end-to-end  the 324-transform scan of N images from encoded bytes to
              predictions. Ours: `imagenet-hard scan` on a Parquet source
              (its unit stats time the scan; model loading excluded). The
              reference: PIL decode, Resize(S, bicubic) + crop for every
              transform, ToTensor + Normalize, torchvision model in eval mode.
  model-only  forward passes on random batches of 224 px crops.
  preprocess  decode + every zoom view + normalise, no model.
Weights: torchvision's random init (seed 0), saved once as .pth and loaded by
both sides, so the two run the same network.
"""
import argparse
import io
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torchvision
from PIL import Image
from torchvision.transforms import functional as TF

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAPER_SCALES = [10, 16, 32, 48, 64, 96, 122, 128, 192, 224, 235, 240, 256, 288, 320, 348, 384, 448, 460, 512,
                573, 576, 640, 664, 672, 680, 686, 690, 700, 720, 768, 798, 832, 896, 911, 1024]
CROP = 224
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TRANSFORMS = [(r, c, s) for r in range(3) for c in range(3) for s in PAPER_SCALES]


def picture(i: int, w: int = 500, h: int = 375) -> bytes:
    """A structured, ImageNet-sized JPEG (gradients, a disc, stripes)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy = x / w, y / h
    disc = ((fx - 0.4 - 0.05 * (i % 3)) ** 2 + (fy - 0.5) ** 2 < 0.05) * 90.0
    stripes = (((x + y * (i % 4 + 1)) // 9) % 2) * 25.0
    rgb = np.stack([200 * fx + disc + stripes, 60 + 150 * fy + stripes, 40 + (i * 37 % 200) + disc * 0.5], -1)
    out = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def zoom(img: Image.Image, row: int, col: int, s: int) -> Image.Image:
    """The paper's transform: resize the shorter side to s (bicubic), crop 224 around the anchor."""
    w, h = img.size
    nw, nh = (s, s * h // w) if w <= h else (s * w // h, s)
    resized = img.resize((nw, nh), Image.BICUBIC)
    tw, th = nw // 3, nh // 3
    left, top = col * tw + tw // 2 - CROP // 2, row * th + th // 2 - CROP // 2
    return resized.crop((left, top, left + CROP, top + CROP))


def to_input(view: Image.Image) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(view), MEAN, STD)


def reference_end_to_end(model, blobs, batch: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        pending = []
        for blob in blobs:
            img = Image.open(io.BytesIO(blob)).convert("RGB")
            for t in TRANSFORMS:
                pending.append(to_input(zoom(img, *t)))
                if len(pending) == batch:
                    model(torch.stack(pending)).argmax(1)
                    pending = []
        if pending:
            model(torch.stack(pending)).argmax(1)
    return time.perf_counter() - start


def reference_preprocess(blobs) -> float:
    start = time.perf_counter()
    for blob in blobs:
        img = Image.open(io.BytesIO(blob)).convert("RGB")
        for t in TRANSFORMS:
            to_input(zoom(img, *t))
    return time.perf_counter() - start


def reference_model_only(model, batch: int, batches: int) -> float:
    x = torch.randn(batch, 3, CROP, CROP, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet50", "vit_b_32"])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=4, help="forward passes per model-only round")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--bin", default=str(ROOT / "target/release/imagenet-hard"))
    ap.add_argument("--out", default=str(ROOT / "output/bench"))
    ap.add_argument("--memory", type=int, metavar="N",
                    help="instead: peak RSS of our scan on N and 10N images (3-scale grid, resnet18)")
    args = ap.parse_args()
    if args.memory:
        return memory(args)
    torch.set_num_threads(args.threads)
    work = pathlib.Path(args.out)
    (work / "images").mkdir(parents=True, exist_ok=True)
    blobs = [picture(i) for i in range(args.images)]
    for i, b in enumerate(blobs):
        (work / "images" / f"{i:04d}.jpg").write_bytes(b)
    table = pa.table({
        "image": pa.array([{"bytes": b, "path": f"{i:04d}.jpg"} for i, b in enumerate(blobs)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "label": pa.array([1] * len(blobs), pa.int64()),
    })
    pq.write_table(table, work / "source.parquet")
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(weights=None).eval()
    weights = work / f"{args.arch}.pth"
    torch.save(model.state_dict(), weights)

    # Each run times ours and then the reference, back to back, so a machine
    # that slows down or speeds up between runs moves both sides alike.
    ours_e2e, ours_pre, ours_fwd, benches = [], [], [], []
    ref_e2e, ref_pre, ref_fwd = [], [], []
    for k in range(args.runs):
        # Ours, end to end: the real scan, timed by its own unit stats.
        run = work / f"run-{k}"
        shutil.rmtree(run, ignore_errors=True)
        manifest = work / f"bench-{k}.toml"
        manifest.write_text(
            f'[build]\nname = "bench"\noutput_dir = "{run}"\nbatch_size = {args.batch}\n\n'
            f'[[source]]\norigin = "bench"\npath = ["source.parquet"]\n\n'
            f'[[model]]\nname = "{args.arch}"\narchitecture = "{args.arch}"\npath = "{weights.name}"\n')
        subprocess.run([args.bin, "scan", str(manifest), "--device", "cpu"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stats = [json.loads(p.read_text()) for p in (run / "scan" / "units").glob("*.stats.json")]
        ours_e2e.append(sum(s["seconds"] for s in stats))
        # Ours, model only and preprocessing only: one round of `imagenet-hard bench`.
        bench = json.loads(subprocess.run(
            [args.bin, "bench", str(work / "images"), "--model", str(weights), "--arch", args.arch,
             "--device", "cpu", "--batch-size", str(args.batch), "--batches", str(args.batches),
             "--rounds", "1"],
            check=True, capture_output=True, text=True).stdout)
        benches.append(bench)
        ours_fwd.append(bench["model_only"]["seconds"])
        ours_pre.append(bench["preprocessing"]["seconds"])
        ref_e2e.append(reference_end_to_end(model, blobs, args.batch))
        ref_pre.append(reference_preprocess(blobs))
        ref_fwd.append(reference_model_only(model, args.batch, args.batches))

    n, crops = len(blobs), len(blobs) * len(TRANSFORMS)
    fwd_crops = args.batch * args.batches
    med = statistics.median
    rows = [
        ("end-to-end images/s", n / med(ours_e2e), n / med(ref_e2e)),
        ("end-to-end crops/s", crops / med(ours_e2e), crops / med(ref_e2e)),
        ("model-only crops/s", fwd_crops / med(ours_fwd), fwd_crops / med(ref_fwd)),
        ("preprocess transforms/s", crops / med(ours_pre), crops / med(ref_pre)),
    ]
    print(f"{args.arch}, {n} images x {len(TRANSFORMS)} transforms, batch {args.batch}, "
          f"{args.threads} threads, median of {args.runs} runs (torch {torch.__version__})")
    print(f"{'metric':26s} {'ours':>10s} {'reference':>10s} {'ours/ref':>9s}")
    for name, ours, ref in rows:
        print(f"{name:26s} {ours:10.2f} {ref:10.2f} {ours / ref:9.2f}")
    # Per crop: preprocessing time over model time.
    share = (med(ours_pre) / crops) / (med(ours_fwd) / fwd_crops)
    print(f"our preprocessing = {100 * share:.1f}% of our model time per crop")
    result = {
        "arch": args.arch, "images": n, "transforms": len(TRANSFORMS), "batch": args.batch,
        "threads": args.threads, "runs": args.runs, "torch": torch.__version__,
        "ours": {"end_to_end_seconds": ours_e2e, "preprocess_seconds": ours_pre,
                 "model_only_seconds": ours_fwd, "bench": benches},
        "reference": {"end_to_end_seconds": ref_e2e, "preprocess_seconds": ref_pre, "model_only_seconds": ref_fwd},
        "ratios": {name: ours / ref for name, ours, ref in rows},
    }
    (work / f"bench-{args.arch}.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {work / f'bench-{args.arch}.json'}", file=sys.stderr)


def memory(args) -> None:
    """Peak RSS of `imagenet-hard scan` on N and then 10N images: it must stay
    flat (records stream to disk, rows stream from the source one row group
    at a time, so the source is written in groups of 100 rows)."""
    work = pathlib.Path(args.out) / "memory"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.manual_seed(0)
    weights = work / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    result = {}
    for n in (args.memory, 10 * args.memory):
        blobs = [picture(i) for i in range(n)]
        pq.write_table(pa.table({
            "image": pa.array([{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(blobs)],
                              pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "label": pa.array([1] * n, pa.int64()),
        }), work / f"source-{n}.parquet", row_group_size=100)  # as Hub image datasets and our shards
        manifest = work / f"memory-{n}.toml"
        manifest.write_text(
            f'[build]\nname = "memory"\noutput_dir = "{work / f"run-{n}"}"\nbatch_size = {args.batch}\n'
            f'unit_images = 100000\n\n[zoom]\nscales = [128, 256, 448]\n\n'
            f'[[source]]\norigin = "m"\npath = ["source-{n}.parquet"]\n\n'
            f'[[model]]\nname = "resnet18"\narchitecture = "resnet18"\npath = "{weights.name}"\n')
        out = subprocess.run(["/usr/bin/time", "-f", "%M", args.bin, "scan", str(manifest), "--device", "cpu"],
                             check=True, capture_output=True, text=True)
        rss_kb = int(out.stderr.strip().splitlines()[-1])
        result[n] = rss_kb / 1024
        print(f"{n:6d} images: peak RSS {rss_kb / 1024:.0f} MiB")
    (work / "memory.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
