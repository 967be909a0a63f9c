#!/usr/bin/env python3
"""Golden ViT logits from PyTorch for the candle parity test.

Builds the same ViT twice, as torchvision's `VisionTransformer` (vit_b_32
names) and as timm's (vit_base_patch32_224 names), with weights from the
splitmix64 generator of `scripts/golden_resnet.py` (so none are stored),
feeds a generated batch, and writes tests/golden/vit/<config>.json.

CI configs are reduced (depth 2, width 64, 4 heads); `--full` also writes
the full-size ViT-B/32 references (tests/golden/vit/*_b32.json), which the
`#[ignore]`d tests in tests/it/golden_vit.rs check.

Usage: python3 scripts/golden_vit.py [--full]   (needs torch, torchvision, timm, numpy)
"""
import json
import pathlib
import sys

import timm
import torch
import torchvision
from torchvision.models.vision_transformer import VisionTransformer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from golden_resnet import golden_doc, reference_logits # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "vit"

# Reduced and full-size shapes; the Rust side mirrors them (vit::Config).
SMALL = dict(dim=64, depth=2, heads=4, mlp_dim=256, patch=32, image_size=224)
B32 = dict(dim=768, depth=12, heads=12, mlp_dim=3072, patch=32, image_size=224)


def torchvision_vit(c: dict) -> torch.nn.Module:
    return VisionTransformer(
        image_size=c["image_size"],
        patch_size=c["patch"],
        num_layers=c["depth"],
        num_heads=c["heads"],
        hidden_dim=c["dim"],
        mlp_dim=c["mlp_dim"],
    )


def timm_vit(c: dict) -> torch.nn.Module:
    # The registered architecture, with its shape overridden.
    return timm.create_model(
        "vit_base_patch32_224",
        pretrained=False,
        img_size=c["image_size"],
        patch_size=c["patch"],
        embed_dim=c["dim"],
        depth=c["depth"],
        num_heads=c["heads"],
        mlp_ratio=c["mlp_dim"] / c["dim"],
    )


def write(name: str, arch: str, model: torch.nn.Module, size: int) -> None:
    generator = f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}"
    logits = reference_logits(model, size)
    tensors = [[k, list(v.shape)] for k, v in sorted(model.state_dict().items())]
    doc = golden_doc(generator, arch, size, logits, tensors=tensors)
    (OUT / f"{name}.json").write_text(json.dumps(doc) + "\n")


def main() -> None:
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    configs = [("small", SMALL)] + ([("b32", B32)] if "--full" in sys.argv[1:] else [])
    for suffix, c in configs:
        write(f"torchvision_{suffix}", "vit_b_32", torchvision_vit(c), c["image_size"])
        write(f"timm_{suffix}", "vit_base_patch32_224", timm_vit(c), c["image_size"])


if __name__ == "__main__":
    main()
