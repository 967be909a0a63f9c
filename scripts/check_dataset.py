#!/usr/bin/env python3
"""Check an exported dataset folder the way downstream users load it.

Usage: python3 scripts/check_dataset.py output/demo/dataset   (needs pyarrow, datasets, pyyaml)
Checks the Parquet schema against the released ImageNet-Hard schema, the
card's YAML front matter, and that `datasets` decodes `image` as a PIL image
both from the bare shards and from the folder with its card.
"""
import glob
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets import load_dataset

EXPECTED = pa.schema([
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("label", pa.list_(pa.int64())),
    ("origin", pa.string()),
    ("english_label", pa.list_(pa.string())),
])


def main(folder: str) -> None:
    shards = sorted(glob.glob(f"{folder}/data/validation-*.parquet"))
    assert shards, f"no shards in {folder}/data"
    rows = 0
    for s in shards:
        schema = pq.read_schema(s)
        assert schema.remove_metadata().equals(EXPECTED), f"{s}: schema\n{schema}"
        assert b"huggingface" in (schema.metadata or {}), f"{s}: no huggingface features metadata"
        md = pq.read_metadata(s)
        assert all(md.row_group(i).num_rows <= 100 for i in range(md.num_row_groups)), f"{s}: row group over 100 rows"
        rows += md.num_rows
    front = yaml.safe_load(open(f"{folder}/README.md").read().split("---\n")[1])
    info = front["dataset_info"]
    assert front["license"] and "image-classification" in front["task_categories"]
    assert {"name": "image", "dtype": "image"} in info["features"]
    assert info["splits"][0]["num_examples"] == rows, (info["splits"], rows)
    assert front["configs"][0]["data_files"][0]["path"] == "data/validation-*"
    bare = load_dataset("parquet", data_files=shards, split="train")
    card = load_dataset(folder, split="validation")
    for ds in (bare, card):
        assert len(ds) == rows
        if rows:
            assert hasattr(ds[0]["image"], "size"), "image not decoded"
    print(f"{folder}: {len(shards)} shard(s), {rows} rows, schema, card and `datasets` decoding OK")


if __name__ == "__main__":
    main(sys.argv[1])
