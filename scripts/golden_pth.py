#!/usr/bin/env python3
"""PyTorch checkpoints for the safe `.pth` reader test.

Writes tests/golden/pth/tensors.pth (a state dict: OrderedDict of tensors, as
torchvision publishes) and tests/golden/pth/code.pth (a checkpoint whose
pickle would call builtins.print on load). Usage: python3 scripts/golden_pth.py
"""
import collections
import pathlib

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "pth"


class Shout:
    def __reduce__(self):
        return (print, ("this checkpoint ran code",))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    sd = collections.OrderedDict(
        [("layer.weight", torch.arange(6, dtype=torch.float32).reshape(2, 3)), ("layer.bias", torch.tensor([0.5, -1.5]))]
    )
    torch.save(sd, OUT / "tensors.pth")
    torch.save({"layer.weight": sd["layer.weight"], "note": Shout()}, OUT / "code.pth")
    print("wrote", sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
