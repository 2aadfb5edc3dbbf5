"""Readers for the stages' real output files, shared by the tests (no stage code reused)."""

from __future__ import annotations

import glob
import json
import os

import tensorflow as tf

from transforms.contracts import DEAD_LETTER_PREFIX, TFRECORD_SUFFIX


def read_examples(data_dir: str, split: str) -> list[dict]:
    """Every tf.Example of one split, decoded to {feature: list of values}."""
    files = sorted(glob.glob(os.path.join(data_dir, f"{split}-*{TFRECORD_SUFFIX}")))
    rows = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        row = {}
        for key, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            row[key] = list(getattr(feature, kind).value)
        rows.append(row)
    return rows


def read_dead_letters(data_dir: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(data_dir, f"{DEAD_LETTER_PREFIX}-*"))):
        with open(path, encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line for line in f.read().split("\n") if line]


def file_tree(root) -> dict[str, bytes]:
    """Every file under `root` by relative path, with its bytes (to show nothing changed)."""
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out
