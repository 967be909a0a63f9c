#!/usr/bin/env python3
"""Golden CLIP zero-shot outputs from PyTorch (transformers) for the candle parity test.

Builds transformers' CLIPModel with weights from the splitmix64 generator of
`src/models/synthetic.rs` (via golden_resnet.py) and writes, under
tests/golden/clip/:

* tokenizer.json: a CLIP BPE tokenizer made the way transformers' CLIPTokenizer
  makes it, from open_clip's bpe_simple_vocab_16e6.txt.gz cut to its first
  TINY_MERGES merges (the full one is 3.6 MB). Its ids are checked against
  open_clip's own tokenizer given the same cut vocabulary; the full-size
  tokenizer is checked the same way on all 80,000 ImageNet prompts.
* tiny_image.json: projected image embeddings of a tiny CLIP (the `logits`
  of the test helper are the embeddings here).
* tiny_zero_shot.json: 100 * normalize(image) @ head^T for a few classes and
  templates, the head made as protocol §4 says, with open_clip's token ids.

`--full DIR` does the same for the full ViT-L/14 configuration (1.7 GB of
synthetic weights, minutes of CPU) into DIR, with the full tokenizer, for the
env-gated `CLIP_FULL_GOLDEN=DIR cargo test --test it golden_clip` check.

Usage: python3 scripts/golden_clip.py [--full DIR]
"""
import argparse
import gzip
import json
import pathlib
import sys
import tempfile
import time
import types

import numpy as np
import torch
import transformers
from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode, default_bpe
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from golden_resnet import splitmix_units, synthetic_state  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "clip"
WEIGHT_SEED = 7
INPUT_SEED = 11
BATCH = 2
CONTEXT = 77
# Cut of the BPE merges for the committed test tokenizer: a small file that
# still merges common words ("a", "photo", "of") into single tokens.
TINY_MERGES = 1000
# jack-o'-lantern (quote and hyphens), missile twice (identical rows).
CLASSES = [0, 2, 607, 657, 744]
TEMPLATES = [0, 1, 24, 79]

TINY = {
    "text": {"vocab_size": 256 * 2 + TINY_MERGES + 2, "hidden_size": 32, "intermediate_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": CONTEXT},
    "vision": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 224, "patch_size": 14},
    "projection_dim": 24,
}
FULL = {
    "text": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
             "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": CONTEXT},
    "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
               "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
    "projection_dim": 768,
}


def bpe_merges(limit: int | None) -> list:
    """open_clip's merges (line 0 is a header); CLIP uses the first 48,894."""
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]][:limit]


def hf_tokenizer(merges: list):
    """CLIP's vocabulary (bytes, bytes + </w>, merges, two specials) in
    transformers' CLIPTokenizer: NFC, whitespace runs to one space,
    lowercase, CLIP's split regex, byte-level BPE with `</w>`, and
    <|startoftext|> ... <|endoftext|> around every text."""
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges).backend_tokenizer


def open_clip_tokenizer(merges: list) -> SimpleTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "bpe.txt.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write("header\n" + "\n".join(" ".join(m) for m in merges))
        return SimpleTokenizer(bpe_path=str(path))


def prompts(classes, templates) -> list:
    return [t(IMAGENET_CLASSNAMES[c]) for c in classes for t in templates]


def check_tokenizer(tok, reference: SimpleTokenizer, texts: list) -> None:
    for text, enc in zip(texts, tok.encode_batch(texts)):
        want = [reference.sot_token_id] + reference.encode(text) + [reference.eot_token_id]
        assert enc.ids == want, (text, enc.ids, want)


def clip_model(cfg: dict) -> CLIPModel:
    text = dict(cfg["text"], hidden_act="quick_gelu", bos_token_id=cfg["text"]["vocab_size"] - 2,
                eos_token_id=cfg["text"]["vocab_size"] - 1, pad_token_id=0)
    vision = dict(cfg["vision"], hidden_act="quick_gelu")
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg["projection_dim"])
    model = CLIPModel(config).eval()
    # The real checkpoint's `logit_scale` is not read: protocol §4 fixes the scale at 100.
    without_scale = types.SimpleNamespace(
        state_dict=lambda: {k: v for k, v in model.state_dict().items() if k != "logit_scale"})
    state = synthetic_state(without_scale, WEIGHT_SEED)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["logit_scale"] and not unexpected, (missing, unexpected)
    return model, sorted(state)


def goldens(cfg: dict, tok, reference: SimpleTokenizer, out: pathlib.Path, label: str) -> None:
    model, names = clip_model(cfg)
    size = cfg["vision"]["image_size"]
    x = splitmix_units(INPUT_SEED, 0, BATCH * 3 * size * size) * np.float32(4.0) - np.float32(2.0)
    x = torch.from_numpy(x.reshape(BATCH, 3, size, size))
    texts = prompts(CLASSES, [OPENAI_IMAGENET_TEMPLATES[t] for t in TEMPLATES])
    check_tokenizer(tok, reference, texts)
    ids = reference(texts, context_length=CONTEXT)
    with torch.inference_mode():
        image = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        text = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        text = text / text.norm(dim=-1, keepdim=True)
        head = text.reshape(len(CLASSES), len(TEMPLATES), -1).mean(dim=1)
        head = head / head.norm(dim=-1, keepdim=True)
        logits = 100.0 * (image / image.norm(dim=-1, keepdim=True)) @ head.T
    common = {
        "generator": f"torch {torch.__version__}, transformers {transformers.__version__}",
        "weight_seed": WEIGHT_SEED,
        "input_seed": INPUT_SEED,
        "batch": BATCH,
        "size": size,
        "config": cfg,
    }
    rows = lambda t: [[float(f"{v:.8g}") for v in row] for row in t.numpy()]  # noqa: E731
    image_doc = dict(common, arch=f"{label} image embeddings", tensors=names, logits=rows(image))
    eot = reference.eot_token_id
    token_ids = [[int(i) for i in row[: row.tolist().index(eot) + 1]] for row in ids]
    zero_shot = dict(common, arch=f"{label} zero-shot", classes=CLASSES,
                     templates=[OPENAI_IMAGENET_TEMPLATES[t]("{}") for t in TEMPLATES],
                     prompts=texts, token_ids=token_ids, logits=rows(logits))
    out.mkdir(parents=True, exist_ok=True)
    prefix = "full" if label.endswith("L/14") else "tiny"
    (out / f"{prefix}_image.json").write_text(json.dumps(image_doc) + "\n")
    (out / f"{prefix}_zero_shot.json").write_text(json.dumps(zero_shot) + "\n")
    print(label, "image |max|", float(image.abs().max()), "logits", logits.numpy().round(3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", type=pathlib.Path, help="write the ViT-L/14 goldens here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    all_prompts = prompts(range(1000), OPENAI_IMAGENET_TEMPLATES)
    assert len(all_prompts) == 80_000
    if args.full:
        merges = bpe_merges(None)
        tok, reference = hf_tokenizer(merges), SimpleTokenizer()
        started = time.time()
        check_tokenizer(tok, reference, all_prompts)
        print(f"full tokenizer = open_clip on all 80,000 prompts ({time.time() - started:.0f} s)")
        args.full.mkdir(parents=True, exist_ok=True)
        tok.save(str(args.full / "tokenizer.json"))
        goldens(FULL, tok, reference, args.full, "CLIP ViT-L/14")
        return
    merges = bpe_merges(TINY_MERGES)
    tok, reference = hf_tokenizer(merges), open_clip_tokenizer(merges)
    check_tokenizer(tok, reference, all_prompts)
    OUT.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT / "tokenizer.json"))
    goldens(TINY, tok, reference, OUT, "tiny CLIP")


if __name__ == "__main__":
    main()
