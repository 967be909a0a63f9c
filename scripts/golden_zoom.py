#!/usr/bin/env python3
"""Golden zoom crops from Pillow for the Rust parity test (protocol §1).

Writes generated input images of odd sizes and several modes to
tests/golden/zoom/inputs/, and for each (input, transform) the 224x224 crop
Pillow produces: convert("RGB"), resize shorter side to S (floor for the
long side) with Image.BICUBIC, crop around the 3x3 integer anchor with
black outside. Also writes Pillow's RGB decode of each input, so decoding
and resizing are checked separately. Index: tests/golden/zoom/cases.json.

Usage: python3 scripts/golden_zoom.py   (needs Pillow, numpy)
"""
import json
import pathlib

import numpy as np
import PIL
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "zoom"
CROP = 224


def smooth(w: int, h: int, seed: int) -> np.ndarray:
    """Gradients, a disc and mild noise: compresses well, exercises every filter tap."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy = x / w, y / h
    disc = (((fx - 0.4) ** 2 + (fy - 0.55) ** 2) < 0.07) * 80.0
    r = 230 * fx + disc
    g = 40 + 180 * fy + 30 * np.sin(x / 3.0)
    b = 120 + 100 * np.cos((x + y) / 7.0) - disc / 2
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 6, size=(h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def inputs() -> dict:
    out = {}
    out["rgb_37x53.png"] = Image.fromarray(smooth(37, 53, 1))
    out["rgb_301x207.png"] = Image.fromarray(smooth(301, 207, 2))
    out["grey_61x45.png"] = Image.fromarray(smooth(61, 45, 3)).convert("L")
    rgba = Image.fromarray(smooth(80, 64, 4)).convert("RGBA")
    alpha = Image.fromarray((np.arange(80 * 64).reshape(64, 80) % 256).astype(np.uint8))
    rgba.putalpha(alpha)
    out["rgba_80x64.png"] = rgba
    out["palette_50x70.png"] = Image.fromarray(smooth(50, 70, 5)).quantize(colors=37)
    out["cmyk_48x40.jpg"] = Image.fromarray(smooth(48, 40, 6)).convert("CMYK")
    out["rgb_120x90.jpg"] = Image.fromarray(smooth(120, 90, 7))
    return out


TRANSFORMS = ["r0c0s10", "r1c1s256", "r2c2s1024", "r0c2s448", "r2c0s96", "r1c2s224"]


def parse(t: str):
    r, rest = t[1:].split("c")
    c, s = rest.split("s")
    return int(r), int(c), int(s)


def zoom(img: Image.Image, t: str) -> Image.Image:
    row, col, s = parse(t)
    w, h = img.size
    if w <= h:
        nw, nh = s, (s * h) // w
    else:
        nw, nh = (s * w) // h, s
    resized = img.resize((nw, nh), Image.BICUBIC)
    tw, th = nw // 3, nh // 3
    ax, ay = col * tw + tw // 2, row * th + th // 2
    left, top = ax - CROP // 2, ay - CROP // 2
    return resized.crop((left, top, left + CROP, top + CROP))


def main() -> None:
    (ROOT / "inputs").mkdir(parents=True, exist_ok=True)
    (ROOT / "crops").mkdir(parents=True, exist_ok=True)
    (ROOT / "decoded").mkdir(parents=True, exist_ok=True)
    cases = []
    for i, (name, img) in enumerate(inputs().items()):
        path = ROOT / "inputs" / name
        if name.endswith(".jpg"):
            img.save(path, quality=95)
        else:
            img.save(path)
        rgb = Image.open(path).convert("RGB")
        decoded = f"decoded/{pathlib.Path(name).stem}.png"
        rgb.save(ROOT / decoded)
        # Two transforms per input, rotating through the list: every anchor
        # row/col and the extreme scales are covered across inputs.
        for t in (TRANSFORMS[i % len(TRANSFORMS)], TRANSFORMS[(i + 3) % len(TRANSFORMS)]):
            crop = f"crops/{pathlib.Path(name).stem}_{t}.png"
            zoom(rgb, t).save(ROOT / crop)
            cases.append({"input": f"inputs/{name}", "mode": Image.open(path).mode, "decoded": decoded, "transform": t, "crop": crop})
    doc = {"generator": f"Pillow {PIL.__version__}", "crop_size": CROP, "cases": cases}
    (ROOT / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(cases)} cases written to {ROOT}")


if __name__ == "__main__":
    main()
