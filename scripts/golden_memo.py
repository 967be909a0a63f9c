#!/usr/bin/env python3
"""Golden MEMO step from PyTorch for the candle test-time adaptation test.

torchvision's resnet18 with the splitmix64 synthetic weights of
`src/models/synthetic.rs` (seed 7, nothing stored), BatchNorm patched the way
MEMO's reference code does it (statistics = p * running + (1 - p) * batch,
batch statistics from a no-grad batch_norm call, p = 16/17), four 64x64
views (input seed 11), loss = marginal entropy of the averaged softmax over
ImageNet-A's 200 classes, one plain SGD step, then the logits of one test
input (seed 13) with the adapted weights. Writes tests/golden/memo/resnet18.json.

The learning rate here is 0.05, not MEMO's 2.5e-4, so that the weight
change stands well above float32 rounding; the step is linear in it.

    python3 scripts/golden_memo.py              (needs torch, torchvision, numpy)
    python3 scripts/golden_memo.py --pillow-ops (prints the Pillow outputs that
                                                 src/eval/augment.rs tests against)
"""
import json
import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from golden_resnet import splitmix_units, synthetic_state  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "golden" / "memo"
WEIGHT_SEED, VIEW_SEED, TEST_SEED = 7, 11, 13
VIEWS, SIZE = 4, 64
PRIOR = 16.0 / 17.0
LR = 0.05
# Tensors whose gradients are recorded (first WATCH values, flat order) and
# summed; fc rows outside the subset must get a zero gradient.
WATCHED = ["conv1.weight", "bn1.weight", "layer2.0.downsample.1.bias", "layer4.1.bn2.weight", "fc.weight", "fc.bias"]
WATCH = 16


def mixed_bn_forward(self, x):
    # MEMO's `_modified_bn_forward`: the first call only fills est_mean /
    # est_var with the batch statistics (momentum 1, unbiased variance).
    est_mean = torch.zeros_like(self.running_mean)
    est_var = torch.ones_like(self.running_var)
    F.batch_norm(x, est_mean, est_var, None, None, True, 1.0, self.eps)
    mean = PRIOR * self.running_mean + (1 - PRIOR) * est_mean
    var = PRIOR * self.running_var + (1 - PRIOR) * est_var
    return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0, self.eps)


def marginal_entropy(logits):
    logp = logits - logits.logsumexp(dim=-1, keepdim=True)
    avg = logp.logsumexp(dim=0) - np.log(logp.shape[0])
    return -(avg * avg.exp()).sum()


def subset_a():
    rows = (ROOT / "src" / "labels" / "imagenet_a.tsv").read_text().splitlines()
    return sorted(int(r.split("\t")[1]) for r in rows if not r.startswith("#"))


def pillow_ops():
    from PIL import Image

    img = np.zeros((6, 8, 3), np.uint8)
    for y in range(6):
        for x in range(8):
            for c in range(3):
                img[y, x, c] = x * 20 + y * 3 + c
    im = Image.fromarray(img)
    shear = im.transform((8, 6), Image.AFFINE, (1, 0.03, 0, 0, 1, 0), resample=Image.BILINEAR)
    print("shear x 0.03, channel 0:\n", np.array(shear)[:, :, 0])
    print("rotate 2, channel 0:\n", np.array(im.rotate(2, resample=Image.BILINEAR))[:, :, 0])


def main() -> None:
    if "--pillow-ops" in sys.argv:
        pillow_ops()
        return
    torch.set_num_threads(2)
    torch.nn.BatchNorm2d.forward = mixed_bn_forward
    model = torchvision.models.resnet18(weights=None)
    missing, unexpected = model.load_state_dict(synthetic_state(model, WEIGHT_SEED), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    model.eval()
    views = splitmix_units(VIEW_SEED, 0, VIEWS * 3 * SIZE * SIZE) * np.float32(4.0) - np.float32(2.0)
    test = splitmix_units(TEST_SEED, 0, 3 * SIZE * SIZE) * np.float32(4.0) - np.float32(2.0)
    views = torch.from_numpy(views.reshape(VIEWS, 3, SIZE, SIZE))
    test = torch.from_numpy(test.reshape(1, 3, SIZE, SIZE))
    subset = torch.tensor(subset_a())

    with torch.no_grad():
        before = model(test)[0]
    loss = marginal_entropy(model(views)[:, subset])
    params = dict(model.named_parameters())
    model.zero_grad()
    loss.backward()
    grads = {k: params[k].grad.detach().clone() for k in WATCHED}
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
        after = model(test)[0]

    doc = {
        "generator": f"torch {torch.__version__}, torchvision {torchvision.__version__}",
        "arch": "resnet18",
        "weight_seed": WEIGHT_SEED,
        "view_seed": VIEW_SEED,
        "test_seed": TEST_SEED,
        "views": VIEWS,
        "size": SIZE,
        "prior_strength": 16,
        "lr": LR,
        "subset": "imagenet-a",
        "loss": float(loss.detach()),
        "grads": {
            k: {
                "first": [float(f"{v:.8g}") for v in g.flatten()[:WATCH].tolist()],
                "sum": float(g.double().sum()),
                "abs_sum": float(g.double().abs().sum()),
            }
            for k, g in grads.items()
        },
        "logits_before": [float(f"{v:.8g}") for v in before.tolist()],
        "logits_after": [float(f"{v:.8g}") for v in after.tolist()],
    }
    print("loss", doc["loss"], "argmax before/after", int(before.argmax()), int(after.argmax()))
    print("max |after - before|", float((after - before).abs().max()))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "resnet18.json").write_text(json.dumps(doc) + "\n")


if __name__ == "__main__":
    main()
