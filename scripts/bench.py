#!/usr/bin/env python3
"""Our scan beside the CPU runtimes a user could pick instead (PyTorch eager,
ONNX Runtime, OpenVINO where it installs), on the same machine, images,
weights, batch size and thread count, for every study model; prints our
speed over each peer's and writes it all as JSON.

  python3 -m venv scripts/.venv
  scripts/.venv/bin/pip install torch torchvision onnxruntime onnx onnxscript \\
      openvino transformers pillow pyarrow numpy   # CPU is enough; openvino and
                                                   # transformers (CLIP) optional
  cargo build --release
  scripts/.venv/bin/python scripts/bench.py --arch all --threads 2 --runs 3
  scripts/.venv/bin/python scripts/bench.py --arch resnet50 --images 2 --scales paper

Measured, each as the median of --runs; every run times ours and then each
peer back to back, so drift of the machine between runs hits all alike:
  model-only  forward passes on one batch of 224 px crops, --batches times
              (after a warm-up). Ours: `imagenet-hard bench --measure model`.
  end-to-end  the zoom scan of --images images from encoded bytes to
              predictions. Ours: `imagenet-hard scan` on a Parquet source (its
              unit stats time the scan; model loading excluded). The peers:
              PIL decode, Resize(S, bicubic) + crop for every transform,
              ToTensor + Normalize, then the runtime, batch by batch (the
              paper's pipeline; only the runtime differs between peers).
              Every runtime is timed warm, as a long scan runs: the peers'
              end to end follows their model-only runs in this process, and
              our scan process reads the source twice, as two units, and
              times the second. The first unit (ours in a fresh process,
              whose memory is touched for the first time) is reported beside
              the table, not in the ratios: on a VM that hands freed memory
              back to its host (free page reporting), first touches cost far
              more than a warm process's (docs/speed.md).
              The grid is the paper's 324 transforms (36 scales x 9 anchors),
              or for the slow models an evenly spread subset of its scales
              (--scales; the table says which).
  preprocess  (--measure preprocess) decode + every zoom view + normalise,
              one thread, no model: ours against PIL.
On a shared machine each run waits for other processes to go idle first,
and a run during which they took more than --max-others of the CPU time
(/proc/stat less our own) is measured again, up to --retries times.
Weights and peers: see scripts/bench_peers.py (torchvision's random init,
saved once and loaded by every runtime; CLIP's image tower with generated
weights, since speed does not depend on the values).
"""
import argparse
import gc
import io
import json
import os
import pathlib
import platform
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_peers  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAPER_SCALES = [10, 16, 32, 48, 64, 96, 122, 128, 192, 224, 235, 240, 256, 288, 320, 348, 384, 448, 460, 512,
                573, 576, 640, 664, 672, 680, 686, 690, 700, 720, 768, 798, 832, 896, 911, 1024]
CROP = 224
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
PEERS = ["torch", "ORT", "OpenVINO"]


def transforms(scales):
    return [(r, c, s) for r in range(3) for c in range(3) for s in scales]


TRANSFORMS = transforms(PAPER_SCALES)


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


def reference_end_to_end(run, blobs, batch: int, grid=TRANSFORMS) -> float:
    """The paper's pipeline with `run` (a peer: float32 NCHW batch -> logits)."""
    start = time.perf_counter()
    with torch.inference_mode():
        pending = []
        for blob in blobs:
            img = Image.open(io.BytesIO(blob)).convert("RGB")
            for t in grid:
                pending.append(to_input(zoom(img, *t)))
                if len(pending) == batch:
                    np.asarray(run(torch.stack(pending))).argmax(1)
                    pending = []
        if pending:
            np.asarray(run(torch.stack(pending))).argmax(1)
    return time.perf_counter() - start


def reference_preprocess(blobs) -> float:
    start = time.perf_counter()
    for blob in blobs:
        img = Image.open(io.BytesIO(blob)).convert("RGB")
        for t in TRANSFORMS:
            to_input(zoom(img, *t))
    return time.perf_counter() - start


def reference_model_only(run, batch: int, batches: int) -> float:
    """`batches` forward passes of one random batch (after one warm-up pass)."""
    x = torch.randn(batch, 3, CROP, CROP, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        run(x)
        start = time.perf_counter()
        for _ in range(batches):
            run(x)
    return time.perf_counter() - start


def e2e_scales(study, choice: str):
    """The end-to-end grid's scales for `study` (None: no end-to-end)."""
    if choice == "none" or study.e2e_scales is False:
        return None
    if choice == "default":
        choice = study.e2e_scales or "paper"
    if choice == "paper":
        return PAPER_SCALES
    if choice.startswith("every "):  # every 3rd / 9th of the paper's scales
        k = int(choice.split()[1].rstrip("stndrh"))
        return PAPER_SCALES[::k]
    return [int(s) for s in choice.split(",")]


class Ours:
    """Runs our binary: `bench --measure model` and `scan`."""

    def __init__(self, args, work: pathlib.Path):
        self.args, self.work = args, work
        self.env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        self.kernels = ["--kernels", args.kernels] if args.kernels else []

    def version(self) -> str:
        """The binary's version, its build time and the work tree's commit."""
        v = subprocess.run([self.args.bin, "--version"], capture_output=True, text=True).stdout.strip()
        built = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(self.args.bin)))
        git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()
        dirty = " + changes" if git("status", "--porcelain", "--untracked-files=no") else ""
        return f"{v} (built {built}, tree {git('rev-parse', '--short', 'HEAD')}{dirty})"

    def bench(self, weights, arch: str, batch: int, batches: int, measure: str = "model") -> dict:
        model = ["--model", str(weights) if weights else "synthetic", "--arch", arch]
        out = subprocess.run(
            [self.args.bin, "bench", str(self.work / "images"), *model, "--device", "cpu", *self.kernels,
             "--batch-size", str(batch), "--batches", str(batches), "--rounds", "1",
             "--measure", measure, "--threads", str(self.args.threads)],
            capture_output=True, text=True, env=self.env)
        if out.returncode != 0:
            raise RuntimeError(f"imagenet-hard bench failed ({out.returncode}): {out.stderr[-2000:]}")
        return json.loads(out.stdout)

    def scan(self, weights, arch: str, batch: int, scales, tag: str) -> tuple[float, float]:
        """One `scan` process over the source twice, as two units: a warm-up
        unit, then the timed one. Returns (seconds of the timed unit, seconds
        of the warm-up unit, i.e. the scan in a fresh process)."""
        run = self.work / f"run-{tag}"
        shutil.rmtree(run, ignore_errors=True)
        manifest = self.work / f"bench-{tag}.toml"
        sources = "".join(f'[[source]]\norigin = "{o}"\npath = ["source.parquet"]\n\n' for o in ("warm-up", "bench"))
        manifest.write_text(
            f'[build]\nname = "bench"\noutput_dir = "{run}"\nbatch_size = {batch}\n\n'
            f'[zoom]\nscales = {json.dumps(scales)}\n\n{sources}'
            f'[[model]]\nname = "{arch}"\narchitecture = "{arch}"\npath = "{weights.name}"\n')
        out = subprocess.run([self.args.bin, "scan", str(manifest), "--device", "cpu", *self.kernels,
                              "--threads", str(self.args.threads)],
                             capture_output=True, text=True, env=self.env)
        if out.returncode != 0:
            raise RuntimeError(f"imagenet-hard scan failed ({out.returncode}): {out.stderr[-2000:]}")
        stats = [json.loads(p.read_text()) for p in (run / "scan" / "units").glob("*.stats.json")]
        shutil.rmtree(run, ignore_errors=True)
        seconds = {s["origin"]: s["seconds"] for s in stats}
        if set(seconds) != {"warm-up", "bench"}:
            raise RuntimeError(f"imagenet-hard scan: expected the units warm-up and bench, got {sorted(seconds)}")
        return seconds["bench"], seconds["warm-up"]


class Others:
    """How much CPU time processes other than this benchmark (and its
    children) take: the machine's busy time from /proc/stat (steal
    included) less our own from os.times(). A run during which others took
    more than --max-others of the machine is measured again; before each
    run we wait (up to --wait-quiet seconds) until the machine is idle."""
    TICK = os.sysconf("SC_CLK_TCK")
    CPUS = os.cpu_count() or 1

    @classmethod
    def _sample(cls):
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)  # user nice system irq softirq steal
        t = os.times()
        return time.perf_counter(), busy / cls.TICK, t.user + t.system + t.children_user + t.children_system

    def __init__(self):
        self.start = self._sample()

    def share(self) -> float:
        """Others' CPU time since construction over the machine's (wall x CPUs)."""
        wall, busy, ours = (b - a for a, b in zip(self.start, self._sample()))
        return max(0.0, busy - ours) / max(wall * self.CPUS, 1e-9)

    @classmethod
    def wait_quiet(cls, limit: float, log, threshold: float = 0.05) -> float:
        """Wait until others take under `threshold` of the machine over 2 s,
        at most `limit` seconds; returns the last share seen."""
        deadline, told = time.time() + limit, False
        while True:
            probe = cls()
            time.sleep(2)
            share = probe.share()
            if share < threshold or time.time() >= deadline:
                return share
            if not told:
                log(f"  the machine is busy (others use {100 * share:.0f}% of it); waiting up to {limit:.0f} s")
                told = True
            time.sleep(8)


def measured(args, log, what: str, once):
    """`once()` as one run of the interleaved measurement, repeated (up to
    --retries times) while other processes took more than --max-others of
    the machine during it; returns its result and the share others took."""
    for attempt in range(args.retries + 1):
        Others.wait_quiet(args.wait_quiet, log)
        probe = Others()
        out = once()
        share = probe.share()
        if share <= args.max_others or attempt == args.retries:
            return out, share
        log(f"  {what}: other processes took {100 * share:.0f}% of the machine during it; measuring again")


def bench_model(study, args, ours: Ours, work: pathlib.Path, blobs, log) -> dict:
    """Every measurement of one study model, ours and each peer back to back per run."""
    arch = study.arch
    batch = min(args.batch, study.batch) if study.batch else args.batch
    batches = args.batches or study.batches
    scales = e2e_scales(study, args.scales) if "end-to-end" in args.measure else None
    if scales is not None and study.ours_weights == "synthetic":
        scales = None  # our scan needs a weights file
    result = {"arch": arch, "batch": batch, "batches": batches, "ours_weights": study.ours_weights}
    t = time.perf_counter()
    try:
        model = bench_peers.build(arch)
    except Exception as e:  # e.g. transformers missing for CLIP
        log(f"{arch}: cannot build the reference model ({e!r:.200}); skipped")
        return {**result, "skipped": f"{e!r:.300}"}
    weights = bench_peers.save_weights(study, model, work)
    log(f"{arch}: built and saved in {time.perf_counter() - t:.0f} s; batch {batch}, "
        f"{batches} batches a model-only round"
        + (f", end to end on {len(blobs)} images x {9 * len(scales)} transforms" if scales else ", model-only"))
    Others.wait_quiet(args.wait_quiet, log)  # OpenVINO's hint is chosen by timing
    peers, failed = bench_peers.make_peers(model, work, arch, batch, args.threads,
                                           [p for p in args.peers if p != "torch"], log)
    result["peers"] = {p.name: p.detail for p in peers}
    result["failed"] = failed
    if scales:
        result["e2e_scales"] = scales
    grid = transforms(scales) if scales else None
    fwd = {"ours": []} | {p.name: [] for p in peers}
    e2e = {"ours": []} | {p.name: [] for p in peers} if grid else {}
    benches = []
    fresh_process = []  # ours' warm-up unit: the scan's first images in a fresh process
    others = {"model_only": [], "end_to_end": []}

    def model_only_run():
        bench = ours.bench(weights, arch, batch, batches)
        return [bench, bench["model_only"]["seconds"]] + [reference_model_only(p, batch, batches) for p in peers]

    def e2e_run(k):
        timed, fresh = ours.scan(weights, arch, batch, scales, f"{arch}-{k}")
        return [fresh, timed] + [reference_end_to_end(p, blobs, batch, grid) for p in peers]

    for k in range(args.runs):
        (bench, *seconds), share = measured(args, log, f"run {k + 1} model-only", model_only_run)
        benches.append(bench)
        others["model_only"].append(share)
        for name, sec in zip(fwd, seconds):
            fwd[name].append(sec)
        line = ", ".join(f"{n} {batch * batches / s[-1]:.2f}" for n, s in fwd.items())
        log(f"  run {k + 1}/{args.runs} model-only crops/s: {line} (others {100 * share:.0f}%)")
        if grid:
            (fresh, *seconds), share = measured(args, log, f"run {k + 1} end-to-end", lambda: e2e_run(k))
            fresh_process.append(fresh)
            others["end_to_end"].append(share)
            for name, sec in zip(e2e, seconds):
                e2e[name].append(sec)
            crops = len(blobs) * len(grid)
            line = ", ".join(f"{n} {crops / s[-1]:.2f}" for n, s in e2e.items())
            log(f"  run {k + 1}/{args.runs} end-to-end crops/s: {line} (others {100 * share:.0f}%; "
                f"ours in a fresh process {crops / fresh_process[-1]:.2f})")
    med = statistics.median
    result["model_only"] = {
        "crops": batch * batches, "seconds": fwd,
        "crops_per_s": {n: batch * batches / med(s) for n, s in fwd.items()},
    }
    if grid:
        crops = len(blobs) * len(grid)
        result["end_to_end"] = {
            "images": len(blobs), "transforms": len(grid), "crops": crops, "seconds": e2e,
            "crops_per_s": {n: crops / med(s) for n, s in e2e.items()},
            # Not in the ratios: ours' first unit, in a fresh process (see the docstring).
            "ours_fresh_process": {"seconds": fresh_process, "crops_per_s": crops / med(fresh_process)},
        }
    result["others_share"] = others
    result["ours_kernels"] = benches[0].get("kernels") if benches else None
    result["ours_bench"] = benches
    del peers, model
    gc.collect()
    return result


def table(results, metric: str, peers) -> list[str]:
    cols = ["ours"] + peers
    head = (f"{'model':24s}" + "".join(f"{c:>10s}" for c in cols)
            + "".join(f"{'ours/' + c:>15s}" for c in peers) + f"{'ours/fastest':>14s}")
    lines = [head]
    for r in results:
        if metric not in r:
            continue
        rate = r[metric]["crops_per_s"]
        have = [p for p in peers if p in rate]
        fastest = max(have, key=lambda p: rate[p]) if have else None
        cells = "".join(f"{rate[c]:10.2f}" if c in rate else f"{'-':>10s}" for c in cols)
        ratios = "".join(f"{rate['ours'] / rate[p]:15.2f}" if p in rate else f"{'-':>15s}" for p in peers)
        best = f"{rate['ours'] / rate[fastest]:9.2f} ({fastest})" if fastest else ""
        name = r["arch"]
        if metric == "end_to_end":
            name += f" ({r[metric]['transforms']}t)"
        elif r["batch"] != results[0]["batch"]:
            name += f" (b{r['batch']})"
        lines.append(f"{name:24s}{cells}{ratios}  {best}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [s.arch for s in bench_peers.STUDY]
    ap.add_argument("--arch", default="resnet50",
                    help=f"comma-separated study models, or all: {', '.join(names)}")
    ap.add_argument("--images", type=int, default=1, help="images of the end-to-end scan")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16, help="crops per forward pass (CLIP: at most 4)")
    ap.add_argument("--batches", type=int,
                    help="forward passes per model-only round (default: per model, see bench_peers.STUDY)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads of every runtime: ours (RAYON_NUM_THREADS and --threads), "
                         "torch.set_num_threads, ORT intra-op, OpenVINO INFERENCE_NUM_THREADS")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument("--measure", default="model,end-to-end",
                    help="comma-separated: model, end-to-end, preprocess")
    ap.add_argument("--model-only", action="store_true", help="same as --measure model")
    ap.add_argument("--scales", default="default",
                    help="scales of the end-to-end grid: default (per model: the paper's 36, or every 3rd / "
                         "9th of them for the slow models), paper, 'every 3rd', 'every 9th', a list "
                         "(128,256,448), or none")
    ap.add_argument("--kernels", choices=["auto", "candle", "fused", "cudnn"],
                    help="passed to our binary's --kernels (default: the binary's, auto); the table "
                         "says which kernels each model ran on")
    ap.add_argument("--max-others", type=float, default=0.05,
                    help="a run during which other processes took more than this share of the machine's "
                         "CPU time is measured again (default 0.05)")
    ap.add_argument("--retries", type=int, default=3, help="at most this many repeats of a disturbed run")
    ap.add_argument("--wait-quiet", type=float, default=300,
                    help="before each run, wait up to this many seconds for other processes to go idle")
    ap.add_argument("--bin", default=str(ROOT / "target/release/imagenet-hard"))
    ap.add_argument("--out", default=str(ROOT / "output/bench"))
    ap.add_argument("--memory", type=int, metavar="N",
                    help="instead: peak RSS of our scan on N and 10N images (3-scale grid, resnet18)")
    args = ap.parse_args()
    if args.memory:
        return memory(args)
    archs = names if args.arch == "all" else args.arch.split(",")
    for a in archs:
        if a not in bench_peers.BY_ARCH:
            ap.error(f"unknown --arch {a}; one of {', '.join(names)} or all")
    args.peers = [p for p in PEERS if p in args.peers.split(",")]
    args.measure = ["model"] if args.model_only else args.measure.split(",")
    torch.set_num_threads(args.threads)
    work = pathlib.Path(args.out)
    (work / "images").mkdir(parents=True, exist_ok=True)
    blobs = [picture(i) for i in range(args.images)]
    for i, b in enumerate(blobs):
        (work / "images" / f"{i:04d}.jpg").write_bytes(b)
    pq.write_table(pa.table({
        "image": pa.array([{"bytes": b, "path": f"{i:04d}.jpg"} for i, b in enumerate(blobs)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "label": pa.array([1] * len(blobs), pa.int64()),
    }), work / "source.parquet")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    ours = Ours(args, work)
    versions = bench_peers.versions() | {"ours": ours.version(), "python": platform.python_version()}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    load_before = os.getloadavg()
    started = time.time()
    header = (f"{args.threads} threads, batch {args.batch}, median of {args.runs} runs; {cpu}, "
              f"{os.cpu_count()} CPUs; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    log(header + f"; load {load_before[0]:.2f}")
    for p in ("ORT", "OpenVINO"):
        if p in args.peers and "unavailable" in versions["onnxruntime" if p == "ORT" else "openvino"]:
            log(f"{p} is not installed here ({versions['onnxruntime' if p == 'ORT' else 'openvino']}); "
                f"going on without it")
    result = {"threads": args.threads, "batch": args.batch, "runs": args.runs, "images": args.images,
              "cpu": cpu, "versions": versions, "kernels": args.kernels, "load_before": load_before,
              "models": []}
    if "preprocess" in args.measure:
        ours_pre, ref_pre = [], []
        for _ in range(args.runs):
            ours_pre.append(ours.bench(None, "resnet18", args.batch, 1, "preprocessing")
                            ["preprocessing"]["seconds"])
            ref_pre.append(reference_preprocess(blobs))
        n = len(blobs) * len(TRANSFORMS)
        result["preprocess"] = {"transforms": n, "ours_seconds": ours_pre, "pil_seconds": ref_pre}
        log(f"preprocess transforms/s (one thread): ours {n / statistics.median(ours_pre):.0f}, "
            f"PIL {n / statistics.median(ref_pre):.0f}")
    label = "all" if args.arch == "all" else "-".join(archs)
    for a in archs:
        r = bench_model(bench_peers.BY_ARCH[a], args, ours, work, blobs, log)
        result["models"].append(r)
        (work / f"bench-{label}.json").write_text(json.dumps(result, indent=2))  # after each model
    result["load_after"] = os.getloadavg()
    result["wall_seconds"] = time.time() - started
    (work / f"bench-{label}.json").write_text(json.dumps(result, indent=2))

    peers = args.peers
    print(header)
    kernels = ", ".join(f"{r['arch']} {r.get('ours_kernels')}" for r in result["models"] if "skipped" not in r)
    print(f"(our kernels: {kernels}; "
          f"load average {load_before[0]:.2f} before, {result['load_after'][0]:.2f} after; "
          f"{result['wall_seconds'] / 60:.0f} min)")
    ran = [r for r in result["models"] if "skipped" not in r]
    if ran:
        print(f"\nmodel-only crops/s (one batch of {args.batch} crops, 224 px)")
        print("\n".join(table(ran, "model_only", peers)))
        if any("end_to_end" in r for r in ran):
            print(f"\nend-to-end crops/s ({args.images} image(s) x (N t) transforms: the paper's 324, "
                  f"or 9 anchors x every 3rd / 9th of its 36 scales; the peers preprocess with PIL)")
            print("\n".join(table(ran, "end_to_end", peers)))
            fresh = [f"{r['arch']} {r['end_to_end']['ours_fresh_process']['crops_per_s']:.2f}"
                     for r in ran if "end_to_end" in r]
            print(f"ours in a fresh process (the scan's warm-up unit; not in the ratios): {', '.join(fresh)}")
    for r in result["models"]:
        notes = []
        if "skipped" in r:
            notes.append(f"skipped: {r['skipped']}")
        for p, why in r.get("failed", {}).items():
            notes.append(f"{p} failed: {why}")
        if r.get("ours_weights") == "synthetic":
            notes.append("ours ran generated weights of the same network, the peers random ones "
                         "(speed does not depend on the values); model-only only")
        worst = max(r.get("others_share", {}).get("model_only", []) + r.get("others_share", {}).get("end_to_end", []),
                    default=0.0)
        if worst > args.max_others:
            notes.append(f"other processes took up to {100 * worst:.0f}% of the machine during a kept run "
                         f"(after {args.retries} retries): treat its numbers with care")
        if "OpenVINO" in r.get("peers", {}):
            notes.append(f"OpenVINO {r['peers']['OpenVINO']}")
        if notes:
            print(f"{r['arch']}: " + "; ".join(notes))
    if "preprocess" in result:
        p = result["preprocess"]
        print(f"preprocess transforms/s, one thread: ours {p['transforms'] / statistics.median(p['ours_seconds']):.0f}, "
              f"PIL {p['transforms'] / statistics.median(p['pil_seconds']):.0f}")
    log(f"wrote {work / f'bench-{label}.json'}")
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

