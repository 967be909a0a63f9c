#!/usr/bin/env python3
"""imagenet-hard beside PyTorch on the same GPU, same batch, one run.

  python3 scripts/gpu_bench.py --bin .gpu/imagenet-hard [--models all] [--out DIR]
                               [--kernels auto|candle|cudnn[,...]] [--batches N] [--e2e ARCHS]

For each study model (generated weights on both sides; speed does not
depend on their values):

  model-only   forward passes of bf16 batches of 224 px crops already on the
               GPU. Peer: PyTorch eager, torchvision's model (transformers'
               CLIP vision tower for CLIP ViT-L/14), cuDNN, channels_last,
               cudnn.benchmark on, TF32 off. Ours: `imagenet-hard bench
               --measure model --dtype bf16` (crops uploaded once as bytes,
               normalised on the GPU, logits read back one batch behind).
  end-to-end   (ResNet-18 and ResNet-50) every photo of a folder through all
               324 zoom transforms to predictions. Peer: a DataLoader with
               one worker per spare core that decodes each photo once with
               Pillow, resizes once per scale and cuts the 9 crops, the GPU
               normalising; ours: `imagenet-hard bench --measure end-to-end`.
  feed         our preprocessing on 1 thread and on every core.

The photos are generated here (ImageNet-sized JPEGs, textured, seeded), so
the machine needs nothing but this repository, the binary, torch,
torchvision, transformers and Pillow. Prints a table of ratios last, writes
every JSON under --out, and with the bench JSON files projects the GPU-hours
of manifests/imagenet-hard.toml (`imagenet-hard plan --dry-run --rates`),
once per --kernels entry.

--kernels (default auto) is passed to every run of ours; a comma list
(e.g. cudnn,candle) runs ours once per entry beside one PyTorch run per
model, each row naming the kernels that actually ran (the bench JSON's
"kernels"). Models the kernel check leaves out (NOT_ON_PATH) are not run
for cudnn. End to end runs the first
entry only. --batches and --e2e shorten the run, and --reuse takes our
model-only runs from the kernels step of scripts/gpu-check.sh instead of
timing them again.

--device cpu runs the same steps on the CPU with tiny settings: a smoke test
of this script, not a measurement.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

# numpy, torch and Pillow are imported by heavy_imports() when needed, so
# --help and scripts/kernel_verdict.py (which reads MODELS) work without them.
np = torch = Image = None


def heavy_imports():
    global np, torch, Image
    import numpy as np
    import torch
    from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent
# Our architecture name -> (model-only target ratio, batches per round).
MODELS = {
    "alexnet": (1.0, 20),
    "vgg16": (1.0, 4),
    "resnet18": (1.0, 20),
    "resnet50": (1.0, 10),
    "vit_b_32": (1.0, 10),
    "efficientnet_b0": (0.7, 6),
    "convnext_base": (0.7, 3),
    "clip_vit_large_patch14": (1.0, 3),
}
# Architectures the kernel check leaves out: CLIP ViT-L/14 runs on the cuDNN
# path, but its CPU parity run would first encode 80,000 prompts for its
# zero-shot head, more than the window allows; `auto` keeps candle's kernels
# for it until a check covers it.
NOT_ON_PATH = {"clip_vit_large_patch14"}
SCALES = [10, 16, 32, 48, 64, 96, 122, 128, 192, 224, 235, 240, 256, 288, 320, 348,
          384, 448, 460, 512, 573, 576, 640, 664, 672, 680, 686, 690, 700, 720, 768,
          798, 832, 896, 911, 1024]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def torch_model(arch):
    """The peer network, randomly initialised."""
    if arch == "clip_vit_large_patch14":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                               num_attention_heads=16, image_size=224, patch_size=14,
                               projection_dim=768, hidden_act="quick_gelu")
        tower = CLIPVisionModelWithProjection(cfg)
        head = torch.nn.Linear(768, 1000, bias=False)

        class ZeroShot(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.tower, self.head = tower, head

            def forward(self, x):
                e = self.tower(pixel_values=x).image_embeds
                return 100 * self.head(e / e.norm(dim=-1, keepdim=True))

        return ZeroShot()
    import torchvision

    return getattr(torchvision.models, arch)(weights=None)


def cuda_time(device, fn, rounds):
    """Median seconds of `fn()` over rounds, timed with device events."""
    times = []
    for _ in range(rounds):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def peer_model_only(arch, device, dtype, batch, batches, rounds):
    torch.manual_seed(0)
    model = torch_model(arch).eval().to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()

        def run():
            for _ in range(batches):
                model(x)

        seconds = cuda_time(device, run, rounds)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return batch * batches / seconds


def resized_size(w, h, s):
    return (s, s * h // w) if w <= h else (s * w // h, s)


def zoom_crops(path):
    """Every zoom view of one photo: decode once, resize once per scale,
    cut the 9 anchor crops with black fill (the paper's geometry)."""
    img = Image.open(path).convert("RGB")
    out = np.zeros((len(SCALES) * 9, 224, 224, 3), np.uint8)
    k = 0
    for s in SCALES:
        w, h = resized_size(img.width, img.height, s)
        r = np.asarray(img.resize((w, h), Image.BICUBIC))
        tw, th = w // 3, h // 3
        for row in range(3):
            for col in range(3):
                left, top = col * tw + tw // 2 - 112, row * th + th // 2 - 112
                x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + 224, w), min(top + 224, h)
                if x1 > x0 and y1 > y0:
                    out[k, y0 - top:y1 - top, x0 - left:x1 - left] = r[y0:y1, x0:x1]
                k += 1
    return torch.from_numpy(out)


class Photos:  # a map-style dataset for torch's DataLoader
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        if torch is None:  # a worker that did not fork from main()
            heavy_imports()
        return zoom_crops(self.files[i])


def peer_end_to_end(arch, device, dtype, batch, files, workers):
    torch.manual_seed(0)
    model = torch_model(arch).eval().to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    loader = torch.utils.data.DataLoader(Photos(files), batch_size=None, num_workers=workers,
                                         pin_memory=device == "cuda", prefetch_factor=4 if workers else None,
                                         persistent_workers=False)
    with torch.inference_mode():
        x = torch.randn(batch, 3, 224, 224, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        model(x)  # warm-up, as ours loads its model before timing
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        buf, held, crops, preds = [], 0, 0, []

        def classify(chunk):
            x = chunk.permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
            preds.append(model(x.to(dtype).contiguous(memory_format=torch.channels_last)).argmax(1))
            return chunk.shape[0]

        for views in loader:
            buf.append(views.to(device, non_blocking=True))
            held += views.shape[0]
            while held >= batch:
                allv = torch.cat(buf)
                crops += classify(allv[:batch])
                buf, held = [allv[batch:]], held - batch
        if held:
            crops += classify(torch.cat(buf))
        torch.cat(preds).cpu()
        seconds = time.perf_counter() - start
    return crops / seconds, crops


def make_photos(folder, n, seed=0):
    """ImageNet-sized JPEGs (about 500 x 375, either way round), textured."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        w, h = (500, 375) if i % 3 else (375, 500)
        w += int(rng.integers(-60, 61))
        h += int(rng.integers(-40, 41))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (i % 7 + 1)) % 256, (yy * 3 + i * 11) % 256, ((xx + yy) * 2) % 256], -1)
        noise = rng.normal(0, 18, (h, w, 3))
        arr = np.clip(base * 0.7 + noise + 40, 0, 255).astype(np.uint8)
        p = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        files.append(p)
    return files


def ours(args, arch, folder, measure, batches, rounds, out_json, kernels="auto"):
    cmd = [args.bin, "bench", str(folder), "--model", "synthetic", "--arch", arch,
           "--device", args.device, "--dtype", args.dtype, "--batch-size", str(args.batch),
           "--batches", str(batches), "--rounds", str(rounds), "--measure", measure,
           "--kernels", kernels]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    with open(out_json.with_suffix(".log"), "w") as f:
        f.write(" ".join(cmd) + "\n" + p.stderr)
    if p.returncode != 0:
        print(f"  ours {arch} {measure} --kernels {kernels}: FAILED (exit {p.returncode}): "
              f"{p.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    out_json.write_text(p.stdout)
    doc = json.loads(p.stdout)
    print(f"  ours {arch} {measure} --kernels {kernels} (ran {doc.get('kernels', '?')}): {wall:.0f} s wall",
          file=sys.stderr)
    return doc


def reuse(args, arch, kernels, out_json):
    """Our model-only run of `arch` from --reuse, if there is one of this
    batch size and dtype that ran what was asked; copied to out_json."""
    if not args.reuse:
        return None
    f = pathlib.Path(args.reuse) / f"{arch}-{kernels}-{args.dtype}.json"
    try:
        doc = json.loads(f.read_text())
        ok = (doc["batch_size"] == args.batch and doc["model_only"]["crops_per_s"] > 0
              and kernels in ("auto", doc["kernels"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not ok:
        return None
    out_json.write_text(f.read_text())
    print(f"  ours {arch} model --kernels {kernels} (ran {doc['kernels']}): reused {f}", file=sys.stderr)
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(REPO / ".gpu" / "imagenet-hard"))
    ap.add_argument("--models", default="all", help="comma-separated architectures, or all")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--kernels", default="auto",
                    help="our kernels: auto, candle or cudnn, or a comma list of them (default auto)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=0,
                    help="model-only forward passes per round (default: per model, MODELS)")
    ap.add_argument("--e2e", default="resnet18,resnet50",
                    help="architectures timed end to end (comma list, or none)")
    ap.add_argument("--photos", type=int, default=64, help="photos for the end-to-end runs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="our feed threads (default: every CPU)")
    ap.add_argument("--reuse", metavar="DIR",
                    help="take our model-only runs from DIR/ARCH-KERNELS-DTYPE.json where one of this "
                         "batch size is there (scripts/gpu-check.sh's kernels step) instead of running them again")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-bench-out"))
    args = ap.parse_args()
    kernels = [k for k in args.kernels.split(",") if k]
    bad = [k for k in kernels if k not in ("auto", "candle", "cudnn")]
    if bad or not kernels:
        ap.error(f"--kernels: {args.kernels!r}: each must be auto, candle or cudnn")
    heavy_imports()
    start = time.perf_counter()
    smoke = args.device == "cpu"
    args.dtype = "f32" if smoke else "bf16"
    dtype = torch.float32 if smoke else torch.bfloat16
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not smoke:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        print(f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}", file=sys.stderr)
    archs = list(MODELS) if args.models == "all" else args.models.split(",")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    photos = make_photos(tmp / "photos", 2 if smoke else args.photos)
    one = tmp / "one"
    one.mkdir()
    (one / photos[0].name).write_bytes(photos[0].read_bytes())
    feed_dir = tmp / "feed"
    feed_dir.mkdir()
    for p in photos[: 2 if smoke else 16]:
        (feed_dir / p.name).write_bytes(p.read_bytes())
    workers = max(1, (os.cpu_count() or 2) - 1)
    # rows: (arch, measure, kernels that ran, peer, ours, target)
    rows, rates = [], {k: [] for k in kernels}
    for arch in archs:
        target, batches = MODELS[arch]
        batches = 1 if smoke else (args.batches or batches)
        rounds = 1 if smoke else args.rounds
        t = time.perf_counter()
        try:
            peer = peer_model_only(arch, args.device, dtype, args.batch, batches, rounds)
        except Exception as e:  # a peer that cannot run is reported, not fatal
            print(f"  peer {arch}: FAILED: {e}", file=sys.stderr)
            peer = None
        print(f"  peer {arch}: {time.perf_counter() - t:.0f} s wall", file=sys.stderr)
        record = {"arch": arch, "peer_model_only": peer, "ours_model_only": None, "kernels": {}}
        for k in kernels:
            if k == "cudnn" and arch in NOT_ON_PATH:
                print(f"  ours {arch} --kernels cudnn: not in the kernel check", file=sys.stderr)
                rows.append((arch, "model-only", "not checked", peer, None, None))
                continue
            mine = reuse(args, arch, k, out / f"bench-{arch}-{k}.json") or \
                ours(args, arch, one, "model", batches, rounds, out / f"bench-{arch}-{k}.json", k)
            rate = mine["model_only"]["crops_per_s"] if mine else None
            ran = mine.get("kernels", k) if mine else k
            if mine:
                rates[k].append(out / f"bench-{arch}-{k}.json")
            rows.append((arch, "model-only", ran, peer, rate, target))
            record["kernels"][k] = {"ran": ran, "crops_per_s": rate}
            if record["ours_model_only"] is None:
                record["ours_model_only"] = rate
        json.dump(record, open(out / f"peer-{arch}.json", "w"))
    e2e = [a for a in args.e2e.split(",") if a in archs]
    k = kernels[0]
    for arch in e2e:
        files = photos
        t = time.perf_counter()
        try:
            peer, _ = peer_end_to_end(arch, args.device, dtype, args.batch, files, 0 if smoke else workers)
        except Exception as e:  # reported, not fatal, as above
            print(f"  peer {arch} end-to-end: FAILED: {e}", file=sys.stderr)
            peer = None
        print(f"  peer {arch} end-to-end: {time.perf_counter() - t:.0f} s wall", file=sys.stderr)
        mine = ours(args, arch, tmp / "photos", "model,end-to-end", 2 if smoke else 10, 1,
                    out / f"bench-{arch}-{k}-e2e.json", k)
        if mine:
            rates[k].append(out / f"bench-{arch}-{k}-e2e.json")
            e, ran = mine["end_to_end"]["crops_per_s"], mine.get("kernels", k)
            rows.append((arch, f"end-to-end vs DataLoader ({len(files)} photos)", ran, peer, e,
                         1.0 if arch == "resnet18" else None))
            rows.append((arch, "end-to-end vs our model-only", ran, mine["model_only"]["crops_per_s"], e,
                         0.9 if arch == "resnet50" else None))
        else:
            rows.append((arch, "end-to-end", k, peer, None, None))
    feed = ours(args, archs[0], feed_dir, "feed", 1, 1, out / "bench-feed.json", k)
    print()
    print(f"{'model':24} {'measure':44} {'kernels':15} {'peer':>10} {'ours':>10} {'ours/peer':>9} {'target':>7}")
    for arch, what, ran, peer, mine, target in rows:
        ratio = mine / peer if (peer and mine) else None
        verdict = "" if target is None or ratio is None else ("ok" if ratio >= target else "MISS")
        f = lambda v: f"{v:10.0f}" if v else f"{'-':>10}"
        print(f"{arch:24} {what:44} {ran:15} {f(peer)} {f(mine)} {ratio if ratio else float('nan'):9.2f} "
              f"{('>= ' + str(target)) if target else '':>7} {verdict}")
    if feed:
        print(f"feed: {feed['feed_1_thread']['crops_per_s']:.0f} crops/s on 1 thread, "
              f"{feed['feed']['crops_per_s']:.0f} on {feed['threads']} = {feed['feed_scaling']:.2f}x")
    for k, files in rates.items():
        if not files:
            continue
        p = subprocess.run([args.bin, "plan", "--dry-run", str(REPO / "manifests" / "imagenet-hard.toml"),
                            "--rates", *map(str, files)], capture_output=True, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
        cost = p.stdout[p.stdout.find("cost ("):] if "cost (" in p.stdout else p.stderr
        (out / f"projection-{k}.txt").write_text(cost)
        print(f"\nProjected rebuild of manifests/imagenet-hard.toml on this GPU, --kernels {k}:\n" + cost)
    print(f"gpu_bench.py: {time.perf_counter() - start:.0f} s in all", file=sys.stderr)


if __name__ == "__main__":
    main()
