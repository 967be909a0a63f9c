#!/usr/bin/env python3
"""Golden ResNet logits from PyTorch for the candle parity test.

Builds torchvision's resnet18/resnet50 with weights from the same splitmix64
generator as `src/models/synthetic.rs` (so no weights are stored), feeds a
generated batch, and writes tests/golden/resnet/<arch>.json.

Usage: python3 scripts/golden_resnet.py   (needs torch, torchvision, numpy)
"""
import json
import pathlib

import numpy as np
import torch
import torchvision

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "resnet"
WEIGHT_SEED = 7
INPUT_SEED = 11
BATCH, SIZE = 2, 224
M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix_units(seed: int, start: int, n: int) -> np.ndarray:
    """u_i = (splitmix64 output number start+i+1) >> 40, / 2^24, as float32."""
    with np.errstate(over="ignore"):
        i = np.arange(start + 1, start + n + 1, dtype=np.uint64)
        z = np.uint64(seed) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float64) / float(1 << 24)).astype(np.float32)


def value(name: str, shape, u: np.ndarray) -> np.ndarray:
    if name.endswith("running_var"):
        return np.float32(0.5) + u
    if name.endswith("running_mean") or name.endswith("bias"):
        return np.float32(0.2) * (u - np.float32(0.5))
    if len(shape) == 1:
        return np.float32(0.5) + np.float32(0.5) * u
    fan_in = int(np.prod(shape[1:]))
    return (np.float32(2.0) * u - np.float32(1.0)) * np.float32(np.sqrt(np.float32(3.0) / np.float32(fan_in)))


def synthetic_state(model: torch.nn.Module, seed: int) -> dict:
    sd = model.state_dict()
    names = sorted(k for k in sd if not k.endswith("num_batches_tracked"))
    out, pos = {}, 0
    for name in names:
        shape = tuple(sd[name].shape)
        n = int(np.prod(shape))
        u = splitmix_units(seed, pos, n)
        pos += n
        out[name] = torch.from_numpy(value(name, shape, u).reshape(shape).astype(np.float32))
    return out


def reference_logits(model: torch.nn.Module, size: int) -> np.ndarray:
    """Load the synthetic weights into `model` (every name must be filled) and
    run the shared generated batch of BATCH images of size x size."""
    model.eval()
    missing, unexpected = model.load_state_dict(synthetic_state(model, WEIGHT_SEED), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    x = splitmix_units(INPUT_SEED, 0, BATCH * 3 * size * size) * np.float32(4.0) - np.float32(2.0)
    with torch.inference_mode():
        return model(torch.from_numpy(x.reshape(BATCH, 3, size, size))).numpy()


def golden_doc(generator: str, arch: str, size: int, logits: np.ndarray, **extra) -> dict:
    """The JSON document `tests/it/golden.rs::logits_parity` reads."""
    print(arch, size, logits[:, :3], "max |logit|", float(np.abs(logits).max()))
    return {
        "generator": generator,
        "arch": arch,
        "weight_seed": WEIGHT_SEED,
        "input_seed": INPUT_SEED,
        "batch": BATCH,
        "size": size,
        **extra,
        "logits": [[float(f"{v:.8g}") for v in row] for row in logits],
    }


def main() -> None:
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    for arch in ("resnet18", "resnet50"):
        model = getattr(torchvision.models, arch)(weights=None)
        generator = "torch " + torch.__version__ + ", torchvision " + torchvision.__version__
        doc = golden_doc(generator, arch, SIZE, reference_logits(model, SIZE))
        (OUT / f"{arch}.json").write_text(json.dumps(doc) + "\n")


if __name__ == "__main__":
    main()
