#!/usr/bin/env python3
"""The verdict on the cuDNN kernel path, from scripts/gpu-check.sh's JSON.

  python3 scripts/kernel_verdict.py DIR [--bench DIR/../bench] [--models a,b] [--gpu NAME] [--date YYYY-MM-DD]
  python3 scripts/kernel_verdict.py --self-test

DIR holds, per study model ARCH, what `imagenet-hard bench --model synthetic
--measure model` printed (stdout as .json, stderr as .log):

  ARCH-cudnn-bf16.json   --kernels cudnn --dtype bf16 --parity  (speed, parity)
  ARCH-candle-bf16.json  --kernels candle --dtype bf16          (speed)
  ARCH-cudnn-f32.json    --kernels cudnn --dtype f32 --parity, small batch

and gpu.txt (nvidia-smi's name of the card). --bench is scripts/gpu_bench.py's
--out: its peer-ARCH.json gives PyTorch eager's crops/s, where present.

Prints one table, a line `DECISION arch cudnn|candle (why)` per model and
the rows for GPU_DECISIONS in src/models/channels_last/mod.rs. A model runs
cudnn only if parity holds, bf16 against the CPU's f32 and against candle's
kernels (max_rel < 3e-2, the same top-1 on at least n-1 of n crops), f32
against the CPU (max_rel < 1e-3, every top-1 the same), AND the cuDNN path
is faster than candle's kernels. A run that failed or is missing is a FAIL
with its stderr's tail, and no GPU_DECISIONS row (the model stays undecided).

PASS in the table: parity holds and the cuDNN path reaches its target
against PyTorch eager (gpu_bench.py's MODELS; parity alone where PyTorch was
not measured). Exits 1 when a model failed parity or a run is missing,
0 otherwise: speed never fails it.
"""
import argparse
import datetime
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gpu_bench import MODELS, NOT_ON_PATH  # noqa: E402  (no torch needed)

BF16_MAX_REL = 3e-2
F32_MAX_REL = 1e-3


def load(d, name):
    """(JSON document, None) or (None, why it is missing)."""
    js, log = d / f"{name}.json", d / f"{name}.log"
    try:
        return json.loads(js.read_text()), None
    except (OSError, ValueError) as e:
        why = "no JSON" if isinstance(e, OSError) else f"bad JSON ({e})"
        try:
            lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
            tail = " | ".join(lines[-3:])[-300:] if lines else "empty stderr"
        except OSError:
            tail = "not run (no log)"
        return None, f"{name}: {why}: {tail}"


def num(v):
    """A JSON number; None (serde's writing of inf/NaN) or junk is inf."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.inf


def agreement(a, n, max_rel, slack):
    """(ok, 'max_rel k/n') of one `Agreement`; slack: top-1 misses allowed."""
    if a is None:
        return None, "-"
    rel, k = num(a.get("max_rel")), int(a.get("top1_agree", -1))
    return rel < max_rel and k >= n - slack, f"{rel:.1e} {k}/{n}"


def rate(doc):
    try:
        return float(doc["model_only"]["crops_per_s"])
    except (KeyError, TypeError, ValueError):
        return None


def judge(d, bench, arch):
    """Everything known about one model: a dict with `decision` (cudnn,
    candle, or None when undecided), `why`, `parity_ok` and the cells."""
    r = {"arch": arch}
    cu, e1 = load(d, f"{arch}-cudnn-bf16")
    ca, e2 = load(d, f"{arch}-candle-bf16")
    f32, e3 = load(d, f"{arch}-cudnn-f32")
    runs_failed = [e for e in (e1, e2, e3) if e]
    for doc, what, want in ((cu, "cudnn bf16", "cudnn"), (ca, "candle bf16", "candle"), (f32, "cudnn f32", "cudnn")):
        if doc is not None and doc.get("kernels") != want:
            runs_failed.append(f"{what} ran {doc.get('kernels')!r} kernels, not {want}")
    # bf16 against the CPU and against candle; f32 against the CPU.
    ok = []
    p = (cu or {}).get("parity") or {}
    n = int(p.get("crops", 0))
    o, r["bf16_cpu"] = agreement(p.get("against_cpu_f32"), n, BF16_MAX_REL, 1) if p else (None, "-")
    ok.append(("bf16 vs CPU f32", o, r["bf16_cpu"], BF16_MAX_REL))
    o, r["bf16_candle"] = agreement(p.get("against_candle"), n, BF16_MAX_REL, 1) if p else (None, "-")
    if o is not None:  # null: candle was not run beside it
        ok.append(("bf16 vs candle", o, r["bf16_candle"], BF16_MAX_REL))
    q = (f32 or {}).get("parity") or {}
    o, r["f32_cpu"] = agreement(q.get("against_cpu_f32"), int(q.get("crops", 0)), F32_MAX_REL, 0) if q else (None, "-")
    ok.append(("f32 vs CPU f32", o, r["f32_cpu"], F32_MAX_REL))
    if cu is not None and not p:
        runs_failed.append("cudnn bf16: no parity in its JSON (run without --parity?)")
    if f32 is not None and not q:
        runs_failed.append("cudnn f32: no parity in its JSON (run without --parity?)")
    bad = [f"{w} {cell} (limit {lim:g})" for w, o, cell, lim in ok if o is False]
    r["candle_rate"], r["cudnn_rate"] = rate(ca), rate(cu)
    r["speedup"] = r["cudnn_rate"] / r["candle_rate"] if r["cudnn_rate"] and r["candle_rate"] else None
    try:
        r["peer"] = float(json.loads((bench / f"peer-{arch}.json").read_text())["peer_model_only"])
    except (OSError, ValueError, KeyError, TypeError):
        r["peer"] = None
    r["ratio"] = r["cudnn_rate"] / r["peer"] if r["cudnn_rate"] and r["peer"] else None
    r["target"] = MODELS.get(arch, (1.0, 0))[0]
    r["parity_ok"] = not runs_failed and not bad and r["speedup"] is not None
    if runs_failed:
        r["decision"], r["why"] = None, "; ".join(runs_failed)
        r["verdict"] = "FAIL run"
    elif bad:
        r["decision"], r["why"] = "candle", "parity failed: " + "; ".join(bad)
        r["verdict"] = "FAIL parity"
    elif r["speedup"] is None:
        r["decision"], r["why"] = None, "no model-only crops/s to compare"
        r["verdict"] = "FAIL run"
    elif r["speedup"] > 1.0:
        r["decision"], r["why"] = "cudnn", f"parity holds, {x(r['speedup'])} candle"
    else:
        r["decision"], r["why"] = "candle", f"parity holds but slower: {x(r['speedup'])} candle"
    if r["parity_ok"]:
        r["verdict"] = "PASS" if r["ratio"] is None or r["ratio"] >= r["target"] else "FAIL speed"
        if r["ratio"] is None:
            r["verdict"] += " (no PyTorch)"
    return r


def judge_safely(d, bench, arch):
    """judge(), and a JSON of an unexpected shape a failed run, not a crash."""
    try:
        return judge(d, bench, arch)
    except Exception as e:  # noqa: BLE001
        return {"arch": arch, "decision": None, "why": f"unreadable results: {type(e).__name__}: {e}",
                "verdict": "FAIL run", "parity_ok": False, "bf16_cpu": "-", "bf16_candle": "-", "f32_cpu": "-",
                "candle_rate": None, "cudnn_rate": None, "speedup": None, "peer": None, "ratio": None,
                "target": MODELS.get(arch, (1.0, 0))[0]}


def x(s):
    return f"{s:.1f}x" if s >= 2 else f"{s:.2f}x"


def gpu_name(d, given):
    name = given
    if not name and (d / "gpu.txt").is_file():
        name = ((d / "gpu.txt").read_text().strip().splitlines() or [""])[0]
    if not name:
        try:
            name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            name = "unknown GPU"
    return name.removeprefix("NVIDIA ").replace('"', "'").strip()


def report(d, bench, archs, gpu, date, out=sys.stdout):
    """Print the table, the decisions and the GPU_DECISIONS rows; return the
    per-model results."""
    rows = [judge_safely(d, bench, a) for a in archs if a not in NOT_ON_PATH]
    f = lambda v, spec: "-" if v is None else format(v, spec)
    head = ["model", "bf16 vs CPU f32", "bf16 vs candle", "f32 vs CPU f32", "candle/s", "cudnn/s",
            "speedup", "PyTorch/s", "vs PyTorch", "target", "verdict"]
    cells = [[r["arch"], r["bf16_cpu"], r["bf16_candle"], r["f32_cpu"], f(r["candle_rate"], ".0f"),
              f(r["cudnn_rate"], ".0f"), "-" if r["speedup"] is None else x(r["speedup"]), f(r["peer"], ".0f"),
              f(r["ratio"], ".2f"), f"{r['target']:.1f}x", r["verdict"]] for r in rows]
    w = [max(len(str(c[i])) for c in [head] + cells) for i in range(len(head))]
    line = lambda c: " | ".join(str(v).ljust(w[i]) for i, v in enumerate(c)).rstrip()
    print(f"cuDNN kernel path on {gpu}, {date} (parity: max_rel and top-1 k/n crops; crops/s model-only)", file=out)
    print(line(head), file=out)
    print("-+-".join("-" * n for n in w), file=out)
    for c in cells:
        print(line(c), file=out)
    print("verdict: PASS = parity holds and cudnn/s >= target x PyTorch eager (parity alone without PyTorch); "
          "FAIL speed = parity holds, under target; FAIL parity; FAIL run = a run failed or is missing", file=out)
    for a in archs:
        if a in NOT_ON_PATH:
            print(f"{a}: not in the kernel check (auto keeps candle's kernels)", file=out)
    print(file=out)
    for r in rows:
        print(f"DECISION {r['arch']} {r['decision'] or 'candle'} ({'' if r['decision'] else 'undecided: '}{r['why']})",
              file=out)
    print("\n// GPU_DECISIONS rows for src/models/channels_last/mod.rs:", file=out)
    for r in rows:
        if r["decision"] is None:
            print(f"// {r['arch']}: undecided (a run failed), no row", file=out)
            continue
        note = ("" if r["parity_ok"] else "parity failed, ") + f"{x(r['speedup'])} candle"
        dec = "ChannelsLast" if r["decision"] == "cudnn" else "Candle"
        print(f'("{r["arch"]}", Decision::{dec}, "{gpu}, {date}, {note}"),', file=out)
    return rows


def self_test():
    """Fake JSONs for five models; the decisions must come out as planned."""
    def bench_doc(kernels, rate_, parity=None):
        doc = {"architecture": "x", "kernels": kernels, "model_only": {"crops_per_s": rate_}}
        if parity is not None:
            doc["parity"] = parity
        return doc

    def par(n, cpu, k_cpu, candle=None, k_candle=None):
        agree = lambda rel, k: {"max_rel": rel, "top1_agree": k}
        return {"crops": n, "against_cpu_f32": agree(cpu, k_cpu),
                "against_candle": None if candle is None else agree(candle, k_candle)}

    with tempfile.TemporaryDirectory() as t:
        d, bench = pathlib.Path(t) / "kernels", pathlib.Path(t) / "bench"
        d.mkdir()
        bench.mkdir()

        def put(arch, kind, doc, log="bench: ok\n"):
            (d / f"{arch}-{kind}.log").write_text(log)
            if doc is not None:
                (d / f"{arch}-{kind}.json").write_text(json.dumps(doc))

        good_f32 = bench_doc("cudnn", 100.0, par(8, 2e-5, 8, 1e-5, 8))
        # resnet50: parity holds, 3x candle, beats PyTorch -> cudnn, PASS
        put("resnet50", "cudnn-bf16", bench_doc("cudnn", 9000.0, par(16, 8e-3, 16, 7e-3, 16)))
        put("resnet50", "candle-bf16", bench_doc("candle", 3000.0))
        put("resnet50", "cudnn-f32", good_f32)
        (bench / "peer-resnet50.json").write_text(json.dumps({"arch": "resnet50", "peer_model_only": 8500.0}))
        # vgg16: bf16 off by 5e-2 against the CPU -> candle (parity)
        put("vgg16", "cudnn-bf16", bench_doc("cudnn", 2000.0, par(16, 5e-2, 16, 1e-2, 16)))
        put("vgg16", "candle-bf16", bench_doc("candle", 1000.0))
        put("vgg16", "cudnn-f32", good_f32)
        # alexnet: parity holds, slower than candle -> candle (slower); one
        # top-1 miss of 16 is allowed; against_candle null is not judged
        put("alexnet", "cudnn-bf16", bench_doc("cudnn", 800.0, par(16, 1e-2, 15)))
        put("alexnet", "candle-bf16", bench_doc("candle", 1000.0))
        put("alexnet", "cudnn-f32", good_f32)
        # resnet18: cuDNN did not load -> undecided, FAIL run, stderr quoted
        put("resnet18", "cudnn-bf16", None, "error: cannot load libcudnn.so.9: not found\n")
        put("resnet18", "candle-bf16", bench_doc("candle", 5000.0))
        put("resnet18", "cudnn-f32", None, "error: cannot load libcudnn.so.9: not found\n")
        # vit_b_32: f32 logits off (inf written as null) -> candle (parity)
        put("vit_b_32", "cudnn-bf16", bench_doc("cudnn", 3000.0, par(16, 1e-2, 16, 1e-2, 16)))
        put("vit_b_32", "candle-bf16", bench_doc("candle", 1000.0))
        put("vit_b_32", "cudnn-f32", bench_doc("cudnn", 10.0, par(8, None, 8, 1e-5, 8)))
        # efficientnet_b0: a JSON that is not JSON -> FAIL run
        (d / "efficientnet_b0-cudnn-bf16.json").write_text("{trunc")
        (d / "efficientnet_b0-cudnn-bf16.log").write_text("thread 'main' panicked at src/x.rs\n")
        # convnext_base: nothing at all
        (d / "gpu.txt").write_text("NVIDIA H200\n")
        archs = list(MODELS)
        import io
        buf = io.StringIO()
        rows = {r["arch"]: r for r in report(d, bench, archs, gpu_name(d, None), "2026-12-06", buf)}
        text = buf.getvalue()
        print(text)
        want = {"resnet50": "cudnn", "vgg16": "candle", "alexnet": "candle", "resnet18": None,
                "vit_b_32": "candle", "efficientnet_b0": None, "convnext_base": None}
        got = {a: r["decision"] for a, r in rows.items()}
        assert got == want, got
        assert rows["resnet50"]["verdict"] == "PASS", rows["resnet50"]
        assert "parity failed" in rows["vgg16"]["why"] and "5.0e-02" in rows["vgg16"]["why"]
        assert "slower" in rows["alexnet"]["why"] and rows["alexnet"]["verdict"].startswith("PASS")
        assert "libcudnn.so.9" in rows["resnet18"]["why"] and rows["resnet18"]["verdict"] == "FAIL run"
        assert "f32 vs CPU f32 inf" in rows["vit_b_32"]["why"], rows["vit_b_32"]["why"]
        assert "panicked" in rows["efficientnet_b0"]["why"]
        assert "no JSON" in rows["convnext_base"]["why"]
        assert '("resnet50", Decision::ChannelsLast, "H200, 2026-12-06, 3.0x candle"),' in text
        assert '("alexnet", Decision::Candle, "H200, 2026-12-06, 0.80x candle"),' in text
        assert '("vgg16", Decision::Candle, "H200, 2026-12-06, parity failed, 2.0x candle"),' in text
        assert "// resnet18: undecided" in text and "clip_vit_large_patch14: not in the kernel check" in text
        assert "DECISION resnet18 candle (undecided: " in text
        # The command line: exit 1 (parity failures, missing runs); 0 over
        # resnet50 alone; no crash over an empty folder.
        me = [sys.executable, __file__]
        assert subprocess.run(me + [str(d), "--bench", str(bench)], capture_output=True).returncode == 1
        p = subprocess.run(me + [str(d), "--bench", str(bench), "--models", "resnet50,alexnet"],
                           capture_output=True, text=True)
        assert p.returncode == 0 and "DECISION resnet50 cudnn" in p.stdout, p.stdout + p.stderr
        # JSON of an unexpected shape (top1_agree null): a failed run, no crash
        odd = pathlib.Path(t) / "odd"
        odd.mkdir()
        for kind in ("cudnn-bf16", "candle-bf16", "cudnn-f32"):
            (odd / f"resnet50-{kind}.json").write_text(json.dumps(
                {"kernels": kind.split("-")[0], "model_only": {"crops_per_s": 1.0},
                 "parity": {"crops": 8, "against_cpu_f32": {"max_rel": 0.0, "top1_agree": None}}}))
        p = subprocess.run(me + [str(odd), "--models", "resnet50", "--gpu", "H100"], capture_output=True, text=True)
        assert p.returncode == 1 and "unreadable results: TypeError" in p.stdout, p.stdout + p.stderr
        empty = pathlib.Path(t) / "empty"
        empty.mkdir()
        p = subprocess.run(me + [str(empty), "--gpu", "H100"], capture_output=True, text=True)
        assert p.returncode == 1 and "Traceback" not in p.stderr and p.stdout.count("| FAIL run") == 7, p.stdout
    print("kernel_verdict self-test: OK")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", help="the kernels folder of a gpu-check run ($OUT/kernels)")
    ap.add_argument("--bench", help="gpu_bench.py's --out (default: DIR/../bench)")
    ap.add_argument("--models", default="all", help="comma list of architectures (default: every study model)")
    ap.add_argument("--gpu", help="the card's name (default: DIR/gpu.txt, else nvidia-smi)")
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.dir:
        ap.error("give the kernels folder, or --self-test")
    d = pathlib.Path(args.dir)
    bench = pathlib.Path(args.bench) if args.bench else d.parent / "bench"
    archs = list(MODELS) if args.models == "all" else [a for a in args.models.split(",") if a]
    rows = report(d, bench, archs, gpu_name(d, args.gpu), args.date)
    sys.exit(0 if all(r["parity_ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
