#!/usr/bin/env python3
"""Regenerate CLIP's zero-shot tables in src/labels/ from the installed `open_clip` package.

Writes src/labels/clip_imagenet.txt (OpenAI's curated 1000 ImageNet class
names, one per line, in class-index order; duplicates such as "missile" at
657 and 744 kept) and src/labels/clip_templates.txt (OpenAI's 80 ImageNet
prompt templates, `{}` = the class name).

Usage: python3 scripts/gen_clip_tables.py   (needs open_clip_torch)
The lists are facts from open_clip/zero_shot_metadata.py (MIT).
"""
import pathlib

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

OUT = pathlib.Path(__file__).resolve().parent.parent / "src" / "labels"


def main() -> None:
    names = list(IMAGENET_CLASSNAMES)
    templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert len(names) == 1000, len(names)
    assert len(templates) == 80, len(templates)
    assert names[657] == names[744] == "missile" and names[836] == names[837] == "sunglasses"
    assert all(n and n == n.strip() and "\n" not in n for n in names)
    assert all(t.count("{}") == 1 and "\n" not in t for t in templates)
    (OUT / "clip_imagenet.txt").write_text("".join(n + "\n" for n in names))
    (OUT / "clip_templates.txt").write_text("".join(t + "\n" for t in templates))
    print(f"{len(names)} class names, {len(templates)} templates -> {OUT}")


if __name__ == "__main__":
    main()
