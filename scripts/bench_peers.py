"""The study models and the CPU runtimes `scripts/bench.py` sets beside ours.

Each study model is built by torchvision (CLIP's image tower by transformers)
with its random init (seed 0) and saved once as a checkpoint our binary reads:
torchvision's own tensor names where our loader takes them, timm's names for
VGG-16, EfficientNet-B0 and ConvNeXt-Base (ours reads timm names for those;
the renaming below is checked name by name and shape by shape against the
golden tests' lists, tests/golden/{vgg/tensors,effnet/state_dicts}.json). So every runtime runs the same network
with the same weights. CLIP is the exception: ours runs `--model synthetic`
(generated weights of the same ViT-L/14 image tower, with its zero-shot head)
and the peers a transformers CLIPVisionModelWithProjection with random
weights plus a 1000-class head of the same shape; speed does not depend on
the values.

Peers, all on the same batch and thread count:
  torch     PyTorch eager, inference mode, torch.set_num_threads(threads).
  ORT       ONNX Runtime's CPU execution provider on the model exported by
            torch.onnx.export (TorchScript exporter, opset 17, dynamic batch):
            graph optimisation ORT_ENABLE_ALL, intra-op threads = threads,
            inter-op 1, sequential execution.
  OpenVINO  the same ONNX file compiled for the CPU device, f32
            (INFERENCE_PRECISION_HINT f32, so it does not switch to bf16 on a
            CPU that has it), INFERENCE_NUM_THREADS = threads, with the
            LATENCY or the THROUGHPUT performance hint, whichever runs a
            batch faster here (chosen per model, and reported).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import pathlib
import time
from typing import Callable

import numpy as np
import torch
import torchvision

ROOT = pathlib.Path(__file__).resolve().parent.parent
STATE_DICTS = ROOT / "tests/golden/effnet/state_dicts.json"
CROP = 224


@dataclasses.dataclass(frozen=True)
class Study:
    """One study model and how this benchmark runs it."""
    arch: str
    # "torchvision": the torchvision checkpoint as is; "timm": renamed to
    # timm's names; "synthetic": ours generates its own weights.
    ours_weights: str
    # Default forward passes per model-only round (each of --runs rounds).
    batches: int
    # Scales of the end-to-end grid by default (None: the paper's 36), or
    # False: no end-to-end (model-only only).
    e2e_scales: object = None
    # Batch size used instead of --batch (CLIP: "one small batch").
    batch: int | None = None


STUDY = [
    Study("alexnet", "torchvision", batches=12),
    Study("vgg16", "timm", batches=2, e2e_scales="every 9th"),
    Study("resnet18", "torchvision", batches=6),
    Study("resnet50", "torchvision", batches=3, e2e_scales="every 3rd"),
    Study("vit_b_32", "torchvision", batches=3, e2e_scales="every 3rd"),
    Study("efficientnet_b0", "timm", batches=6),
    Study("convnext_base", "timm", batches=2, e2e_scales="every 9th"),
    Study("clip_vit_large_patch14", "synthetic", batches=1, e2e_scales=False, batch=4),
]
BY_ARCH = {s.arch: s for s in STUDY}


# ---------------------------------------------------------------- weights

def _effnet_to_timm(sd: dict) -> dict:
    """torchvision EfficientNet-B0 names -> timm's (`efficientnet_b0`)."""
    bn = ("weight", "bias", "running_mean", "running_var")
    out = {}

    def conv_bn(src: str, conv: str, norm: str) -> None:
        out[f"{conv}.weight"] = sd[f"{src}.0.weight"]
        for p in bn:
            out[f"{norm}.{p}"] = sd[f"{src}.1.{p}"]

    def se(src: str, dst: str) -> None:
        for a, b in (("fc1", "conv_reduce"), ("fc2", "conv_expand")):
            for p in ("weight", "bias"):
                out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]

    conv_bn("features.0", "conv_stem", "bn1")
    stage = 1
    while f"features.{stage}.0.block.0.0.weight" in sd and stage < 8:
        j = 0
        while f"features.{stage}.{j}.block.0.0.weight" in sd:
            src, dst = f"features.{stage}.{j}.block", f"blocks.{stage - 1}.{j}"
            if f"{src}.3.0.weight" in sd:  # inverted residual: expand, dw, SE, project
                conv_bn(f"{src}.0", f"{dst}.conv_pw", f"{dst}.bn1")
                conv_bn(f"{src}.1", f"{dst}.conv_dw", f"{dst}.bn2")
                se(f"{src}.2", f"{dst}.se")
                conv_bn(f"{src}.3", f"{dst}.conv_pwl", f"{dst}.bn3")
            else:  # depthwise separable: dw, SE, project
                conv_bn(f"{src}.0", f"{dst}.conv_dw", f"{dst}.bn1")
                se(f"{src}.1", f"{dst}.se")
                conv_bn(f"{src}.2", f"{dst}.conv_pw", f"{dst}.bn2")
            j += 1
        stage += 1
    conv_bn(f"features.{stage}", "conv_head", "bn2")
    out["classifier.weight"], out["classifier.bias"] = sd["classifier.1.weight"], sd["classifier.1.bias"]
    return out


def _convnext_to_timm(sd: dict) -> dict:
    """torchvision ConvNeXt names -> timm's (`convnext_base`)."""
    out = {}
    wb = ("weight", "bias")
    for p in wb:
        out[f"stem.0.{p}"] = sd[f"features.0.0.{p}"]
        out[f"stem.1.{p}"] = sd[f"features.0.1.{p}"]
        out[f"head.norm.{p}"] = sd[f"classifier.0.{p}"]
        out[f"head.fc.{p}"] = sd[f"classifier.2.{p}"]
    for i in range(4):
        feat = 1 + 2 * i
        if i > 0:
            for p in wb:
                out[f"stages.{i}.downsample.0.{p}"] = sd[f"features.{feat - 1}.0.{p}"]
                out[f"stages.{i}.downsample.1.{p}"] = sd[f"features.{feat - 1}.1.{p}"]
        j = 0
        while f"features.{feat}.{j}.layer_scale" in sd:
            src, dst = f"features.{feat}.{j}", f"stages.{i}.blocks.{j}"
            out[f"{dst}.gamma"] = sd[f"{src}.layer_scale"].reshape(-1)
            for a, b in (("block.0", "conv_dw"), ("block.2", "norm"), ("block.3", "mlp.fc1"), ("block.5", "mlp.fc2")):
                for p in wb:
                    out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]
            j += 1
    return out


def _vgg_to_timm(sd: dict) -> dict:
    """torchvision VGG names -> timm's (`vgg16.tv_in1k`): the first two
    fully connected layers become a 7x7 and a 1x1 convolution, which at
    224 px (a 7x7 map) compute the same products."""
    out = {k: v for k, v in sd.items() if k.startswith("features.")}
    fc1 = sd["classifier.0.weight"]
    out["pre_logits.fc1.weight"] = fc1.reshape(fc1.shape[0], -1, 7, 7)
    out["pre_logits.fc1.bias"] = sd["classifier.0.bias"]
    out["pre_logits.fc2.weight"] = sd["classifier.3.weight"][:, :, None, None]
    out["pre_logits.fc2.bias"] = sd["classifier.3.bias"]
    out["head.fc.weight"], out["head.fc.bias"] = sd["classifier.6.weight"], sd["classifier.6.bias"]
    return out


TO_TIMM = {"efficientnet_b0": _effnet_to_timm, "convnext_base": _convnext_to_timm, "vgg16": _vgg_to_timm}
# The names and shapes our loader reads, from the golden tests.
TIMM_NAMES = {"efficientnet_b0": STATE_DICTS, "convnext_base": STATE_DICTS,
              "vgg16": ROOT / "tests/golden/vgg/tensors.json"}


def timm_state_dict(arch: str, model: torch.nn.Module) -> dict:
    """`model`'s weights under timm's names, checked against the names and
    shapes our loader reads (tests/golden/{effnet/state_dicts,vgg/tensors}.json)."""
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    out = {k: v.contiguous() for k, v in TO_TIMM[arch](sd).items()}
    want = {k: tuple(s) for k, s in json.loads(TIMM_NAMES[arch].read_text())[arch]}
    got = {k: tuple(v.shape) for k, v in out.items()}
    if want != got:
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        raise ValueError(f"{arch}: renamed torchvision weights do not match timm's: "
                         f"missing {missing[:5]}, extra {extra[:5]}, wrong shape {wrong[:5]}")
    if len(out) != len(sd):
        raise ValueError(f"{arch}: {len(sd)} torchvision tensors became {len(out)}")
    return out


class ClipImageTower(torch.nn.Module):
    """CLIP ViT-L/14's image tower as our zero-shot classifier runs it:
    transformers' vision model and projection, L2-normalised embeddings
    times a fixed [768, 1000] head of normalised class embeddings, x 100."""

    def __init__(self):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
        cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                               num_attention_heads=16, image_size=224, patch_size=14,
                               projection_dim=768, hidden_act="quick_gelu")
        self.tower = CLIPVisionModelWithProjection(cfg).eval()
        head = torch.randn(768, 1000, generator=torch.Generator().manual_seed(1))
        self.register_buffer("head", head / head.norm(dim=0, keepdim=True))

    def forward(self, x):
        e = self.tower(pixel_values=x).image_embeds
        return 100.0 * (e / e.norm(dim=-1, keepdim=True)) @ self.head


def build(arch: str) -> torch.nn.Module:
    """The study model with its random init (seed 0), in eval mode."""
    torch.manual_seed(0)
    if arch == "clip_vit_large_patch14":
        return ClipImageTower().eval()
    model = getattr(torchvision.models, arch)(weights=None).eval()
    if arch == "vit_b_32":
        # torchvision zeroes ViT's head, so every logit would be 0 and the
        # peers' agreement with torch's logits would prove nothing.
        with torch.no_grad():
            model.heads.head.weight.normal_(0.0, 0.02)
    return model


def save_weights(study: Study, model: torch.nn.Module, work: pathlib.Path) -> pathlib.Path | None:
    """The checkpoint ours loads (`--model FILE --arch A`), or None for
    `--model synthetic`."""
    if study.ours_weights == "synthetic":
        return None
    sd = model.state_dict() if study.ours_weights == "torchvision" else timm_state_dict(study.arch, model)
    path = work / f"{study.arch}.pth"
    torch.save(sd, path)
    return path


# ---------------------------------------------------------------- peers

class Peer:
    """A runtime that maps a float32 NCHW batch to logits."""
    name = "peer"
    detail = ""

    def __call__(self, x: torch.Tensor):
        raise NotImplementedError


class TorchPeer(Peer):
    name = "torch"

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.detail = f"eager, {torch.get_num_threads()} threads"

    def __call__(self, x: torch.Tensor):
        with torch.inference_mode():
            return self.model(x)


def export_onnx(model: torch.nn.Module, path: pathlib.Path, batch: int) -> pathlib.Path:
    """torch.onnx.export with a dynamic batch axis (the scan's last batch is
    short); the TorchScript exporter at opset 17, else the dynamo one."""
    x = torch.randn(batch, 3, CROP, CROP)
    try:
        torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17,
                          do_constant_folding=True, dynamo=False)
    except Exception as e:  # the legacy exporter may be gone in a later torch
        print(f"  torch.onnx.export (TorchScript) failed ({e!r:.200}); trying dynamo=True")
        torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("n", min=1, max=4096)}},
                          dynamo=True, external_data=False)
    return path


class OrtPeer(Peer):
    name = "ORT"

    def __init__(self, onnx_path: pathlib.Path, threads: int):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.detail = f"CPU EP, ORT_ENABLE_ALL, intra-op {threads}, inter-op 1, sequential"

    def __call__(self, x: torch.Tensor):
        return self.session.run(None, {self.input: x.numpy()})[0]


class OpenVinoPeer(Peer):
    name = "OpenVINO"

    def __init__(self, onnx_path: pathlib.Path, threads: int, probe: torch.Tensor):
        """Compiles the model with the LATENCY and the THROUGHPUT hint, times
        one batch of `probe` with each (the fastest of three, interleaved, after
        a warm-up) and keeps the faster hint."""
        import openvino as ov
        core = ov.Core()
        model = core.read_model(str(onnx_path))
        x = probe.numpy()
        compiled = {}
        for hint in ("LATENCY", "THROUGHPUT"):
            compiled[hint] = core.compile_model(model, "CPU", {
                "PERFORMANCE_HINT": hint,
                "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": "f32",
            })
        requests = {h: c.create_infer_request() for h, c in compiled.items()}
        for r in requests.values():
            r.infer([x])  # warm-up
        # Interleaved, the fastest of three each: a short burst of other work
        # on the machine cannot pick the hint.
        self.tried = {h: float("inf") for h in compiled}
        for _ in range(3):
            for h, r in requests.items():
                start = time.perf_counter()
                r.infer([x])
                self.tried[h] = min(self.tried[h], time.perf_counter() - start)
        hint = min(self.tried, key=self.tried.get)
        best = (self.tried[hint], hint, compiled[hint], requests[hint])
        del compiled, requests
        _, self.hint, self.compiled, self.request = best
        streams = self.compiled.get_property("NUM_STREAMS")
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        precision = precision.get_type_name() if hasattr(precision, "get_type_name") else precision
        self.detail = (f"CPU, {self.hint} hint (one batch: "
                       + ", ".join(f"{h} {1000 * s:.0f} ms" for h, s in self.tried.items())
                       + f"), {threads} threads, {streams} streams, {precision}")

    def __call__(self, x: torch.Tensor):
        self.request.infer([x.numpy()])
        return self.request.get_output_tensor(0).data


def versions() -> dict:
    out = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    try:
        import onnxruntime
        out["onnxruntime"] = onnxruntime.__version__
    except Exception as e:
        out["onnxruntime"] = f"unavailable: {e!r:.120}"
    try:
        import openvino
        out["openvino"] = openvino.__version__
    except Exception as e:
        out["openvino"] = f"unavailable: {e!r:.120}"
    return out


def make_peers(model: torch.nn.Module, work: pathlib.Path, arch: str, batch: int, threads: int,
               want: list[str], log: Callable[[str], None]) -> tuple[list[Peer], dict]:
    """The peers named in `want` for `model`; a peer that fails to export,
    install, compile or agree with torch's logits is left out, and the
    reason is returned in the second value."""
    peers: list[Peer] = [TorchPeer(model)]
    failed = {}
    probe = torch.randn(batch, 3, CROP, CROP, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = model(probe).numpy()
    onnx_path = None
    if {"ORT", "OpenVINO"} & set(want):
        try:
            t = time.perf_counter()
            onnx_path = export_onnx(model, work / f"{arch}.onnx", batch)
            log(f"  exported {onnx_path.name} in {time.perf_counter() - t:.0f} s")
        except Exception as e:
            for name in ("ORT", "OpenVINO"):
                if name in want:
                    failed[name] = f"torch.onnx.export failed: {e!r:.300}"
    makers = {"ORT": lambda: OrtPeer(onnx_path, threads),
              "OpenVINO": lambda: OpenVinoPeer(onnx_path, threads, probe)}
    for name in ("ORT", "OpenVINO"):
        if name not in want or name in failed:
            continue
        try:
            t = time.perf_counter()
            peer = makers[name]()
            got = np.asarray(peer(probe))
            scale = max(float(np.abs(expected).max()), 1e-30)
            rel = float(np.abs(got - expected).max()) / scale
            if not np.isfinite(rel) or rel > 1e-2:
                raise ValueError(f"logits differ from torch's by {rel:.2e} (relative to max |logit|)")
            peer.detail += f"; logits vs torch {rel:.1e}"
            log(f"  {name}: ready in {time.perf_counter() - t:.0f} s ({peer.detail})")
            peers.append(peer)
        except Exception as e:
            failed[name] = f"{e!r:.300}"
            log(f"  {name}: FAILED on {arch}: {failed[name]}")
        gc.collect()
    return peers, failed
