#!/usr/bin/env python3
"""Golden AlexNet / VGG logits from PyTorch for the candle parity tests.

References: torchvision's `alexnet` and timm's `vgg16` / `vgg19`
(`timm.create_model(..., pretrained=False)`, whose state_dict keys are the
names in `timm/vgg*.tv_in1k`). The CI cases run narrow copies: every
convolution and linear layer keeps its kernel, stride and padding but has its
widths divided by WIDTH_DIVISOR (not the 3 image channels or the 1000
classes), so the reference forward code runs unchanged. Input sizes are
picked so that every pooling path runs: AlexNet's AdaptiveAvgPool2d((6, 6))
as identity, up (4 -> 6) and down with overlapping bins (8 -> 6); timm's
ConvMlp on 7x7 features, on 5x5 ones it pools up to 7x7, and on 8x8 ones
whose 2x2 output the head averages.

Weights come from the splitmix64 generator in golden_resnet.py (as
`src/models/synthetic.rs`), so none are stored. Writes
tests/golden/vgg/<arch>_w<divisor>_<size>.json, and tensors.json with the
full-size tensor names and shapes.

Usage: python3 scripts/golden_vgg.py            (needs torch, torchvision, timm, numpy)
       python3 scripts/golden_vgg.py --full DIR  full-size alexnet and vgg16 at 224
         into DIR, for `GOLDEN_VGG_FULL=DIR cargo test full_size -- --ignored`
"""
import argparse
import json
import pathlib

import timm
import torch
import torchvision
from torch import nn

from golden_resnet import golden_doc, reference_logits

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "vgg"
WIDTH_DIVISOR = 8
NUM_CLASSES = 1000
# (arch, input size): see the docstring for what each size exercises.
CASES = [
    ("alexnet", 224),
    ("alexnet", 160),
    ("alexnet", 288),
    ("vgg16", 224),
    ("vgg16", 160),
    ("vgg19", 256),
]


def reference(arch: str) -> nn.Module:
    if arch == "alexnet":
        return torchvision.models.alexnet(weights=None)
    return timm.create_model(arch, pretrained=False)


def narrowed(model: nn.Module, divisor: int) -> nn.Module:
    """Divide the widths of every Conv2d and Linear, in place."""

    def div(n: int, keep: int) -> int:
        assert n == keep or n % divisor == 0, (n, divisor)
        return n if n == keep else n // divisor

    for name, m in list(model.named_modules()):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(div(m.in_channels, 3), div(m.out_channels, -1), m.kernel_size,
                            m.stride, m.padding, bias=m.bias is not None)
        elif isinstance(m, nn.Linear):
            new = nn.Linear(div(m.in_features, -1), div(m.out_features, NUM_CLASSES),
                            bias=m.bias is not None)
        else:
            continue
        setattr(parent, attr, new)
    return model


def logits_doc(arch: str, divisor: int, size: int) -> dict:
    model = reference(arch)
    if divisor != 1:
        model = narrowed(model, divisor)
    generator = f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}"
    return golden_doc(generator, arch, size, reference_logits(model, size), width_divisor=divisor)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", type=pathlib.Path, help="write full-size alexnet/vgg16 goldens here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.full:
        args.full.mkdir(parents=True, exist_ok=True)
        for arch in ("alexnet", "vgg16"):
            doc = logits_doc(arch, 1, 224)
            (args.full / f"{arch}.json").write_text(json.dumps(doc) + "\n")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    tensors = {
        arch: [[k, list(v.shape)] for k, v in sorted(reference(arch).state_dict().items())]
        for arch in ("alexnet", "vgg16", "vgg19")
    }
    (OUT / "tensors.json").write_text(json.dumps(tensors, indent=1) + "\n")
    for arch, size in CASES:
        doc = logits_doc(arch, WIDTH_DIVISOR, size)
        (OUT / f"{arch}_w{WIDTH_DIVISOR}_{size}.json").write_text(json.dumps(doc) + "\n")


if __name__ == "__main__":
    main()
