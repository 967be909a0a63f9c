#!/usr/bin/env python3
"""Golden EfficientNet / ConvNeXt logits from timm for the candle parity tests.

Builds the timm models (reduced widths/depths for CI, through timm's own
generators and classes) with weights from the splitmix64 generator shared
with `src/models/synthetic.rs`, feeds a generated batch and writes
tests/golden/effnet/<config>.json. It also writes state_dicts.json: every
tensor name and shape of the full-size timm models, which the Rust tests
compare with what the candle ports read.

Usage:
  python3 scripts/golden_effnet.py            # CI configs -> tests/golden/effnet/
  python3 scripts/golden_effnet.py --full DIR # full-size models at 224 -> DIR (not committed)
(needs torch, timm, numpy)
"""
import json
import pathlib
import sys

import timm
import torch
from functools import partial

from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet, _gen_efficientnet, _gen_efficientnet_lite

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from golden_resnet import golden_doc, reference_logits # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "effnet"


def lite(cm, dm):
    # What timm's tf_efficientnet_lite0 entrypoint adds to the generator.
    return _gen_efficientnet_lite("tf_efficientnet_lite0", cm, dm, bn_eps=1e-3, pad_type="same")


def efficientnet_3_stages():
    # B0's first three stages, stem 16, head 64: shallow enough that the
    # logits still depend on the input noise (the full depth washes it out).
    arch_def = [["ds_r1_k3_s1_e1_c16_se0.25"], ["ir_r2_k3_s2_e6_c24_se0.25"], ["ir_r2_k5_s2_e6_c40_se0.25"]]
    return EfficientNet(
        block_args=decode_arch_def(arch_def),
        num_features=64,
        stem_size=16,
        round_chs_fn=partial(round_channels, multiplier=1.0),
        act_layer=torch.nn.SiLU,
    )


# (file stem, description, constructor, input size)
CI = [
    ("tf_efficientnet_lite_w025_d05_s64", "tf_efficientnet_lite (w0.25, d0.5) @64", lambda: lite(0.25, 0.5), 64),
    ("tf_efficientnet_lite_w025_d05_s57", "tf_efficientnet_lite (w0.25, d0.5) @57", lambda: lite(0.25, 0.5), 57),
    ("efficientnet_w025_d05_s64", "efficientnet (w0.25, d0.5) @64",
     lambda: _gen_efficientnet("efficientnet_b0", 0.25, 0.5), 64),
    ("efficientnet_3stages_s32", "efficientnet (B0 stages 0-2, stem 16, head 64) @32", efficientnet_3_stages, 32),
    ("convnext_d1121_atto_dims_s64", "convnext (depths 1,1,2,1, atto dims) @64",
     lambda: ConvNeXt(depths=(1, 1, 2, 1), dims=(40, 80, 160, 320)), 64),
]

FULL = ["tf_efficientnet_lite0", "efficientnet_b0", "convnext_base"]


def golden(stem: str, desc: str, model: torch.nn.Module, size: int, out: pathlib.Path) -> None:
    generator = "torch " + torch.__version__ + ", timm " + timm.__version__
    doc = golden_doc(generator, desc, size, reference_logits(model, size))
    (out / f"{stem}.json").write_text(json.dumps(doc) + "\n")


def main() -> None:
    torch.set_num_threads(2)
    if len(sys.argv) == 3 and sys.argv[1] == "--full":
        out = pathlib.Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for name in FULL:
            golden(name, name, timm.create_model(name, pretrained=False), 224, out)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for stem, desc, make, size in CI:
        golden(stem, desc, make(), size, OUT)
    shapes = {}
    for name in FULL:
        sd = timm.create_model(name, pretrained=False).state_dict()
        shapes[name] = [[k, list(v.shape)] for k, v in sorted(sd.items()) if not k.endswith("num_batches_tracked")]
    (OUT / "state_dicts.json").write_text(json.dumps(shapes) + "\n")


if __name__ == "__main__":
    main()
