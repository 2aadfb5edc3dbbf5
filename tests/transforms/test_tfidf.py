"""Bag-of-n-grams TF-IDF in the transform graph, through tf.Transform's own analyze-and-transform
call on the in-process runner: the fast n-gram vocabulary against the textbook one, the one OOV
id, n-grams over the whole text, the L2 norm, and the settings as preprocess_config.json holds
them."""

import json
import math
import tempfile

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline

from transforms.contracts import (
    FEATURE_SEQUENCE,
    FEATURE_TFIDF,
    NGRAM_VOCAB_NAME,
    SPLIT_KEY,
    TFIDF_IDS_KEY,
    TFIDF_WEIGHTS_KEY,
    TOKEN_VOCAB_NAME,
)
from transforms.corpus_io import tft_input_schema
from transforms.preprocess_graph import tensor_adapter_config
from transforms.text_preprocessing import TextSettings, l2_normalize_rows, make_preprocessing_fn

TFIDF = (FEATURE_SEQUENCE, FEATURE_TFIDF)


def _batch(texts, labels):
    one = lambda values: pa.array([[v] for v in values], pa.list_(pa.string()))  # noqa: E731
    return pa.RecordBatch.from_arrays(
        [one(texts), one(labels), one(["train"] * len(texts))], schema=tft_input_schema()
    )


def analyze_and_transform(texts, settings: TextSettings, batch_rows: int = 4):
    """The real preprocessing_fn over `texts` in batches of `batch_rows` (so the analyzers sum
    over several batches); returns (rows as dicts, {asset name: its lines})."""
    out_dir = tempfile.mkdtemp()
    labels = (["x", "y"] * len(texts))[: len(texts)]
    batches = [
        _batch(texts[i : i + batch_rows], labels[i : i + batch_rows])
        for i in range(0, len(texts), batch_rows)
    ]
    with (
        TestPipeline(runner=FnApiRunner()) as p,
        tft_beam.Context(temp_dir=f"{out_dir}/tmp", passthrough_keys={SPLIT_KEY}),
    ):
        data = p | beam.Create(batches)
        adapter = tensor_adapter_config(False)
        (transformed, _), transform_fn = (data, adapter) | tft_beam.AnalyzeAndTransformDataset(
            make_preprocessing_fn(settings), output_record_batches=True
        )
        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
        _ = (
            transformed
            | beam.Map(lambda b: json.dumps(b[0].to_pylist()))
            | beam.io.WriteToText(f"{out_dir}/rows", shard_name_template="")
        )
    assets = {}
    for name in (TOKEN_VOCAB_NAME, NGRAM_VOCAB_NAME):
        if tf.io.gfile.exists(f"{out_dir}/transform_fn/assets/{name}"):
            with open(f"{out_dir}/transform_fn/assets/{name}", encoding="utf-8") as f:
                assets[name] = f.read().split("\n")
    rows = [row for line in open(f"{out_dir}/rows", encoding="utf-8") for row in json.loads(line)]
    return sorted(rows, key=lambda r: r["token_ids"] + r["num_tokens"]), assets


TEXTS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "The cat and the dog",
    "a cat a dog a mat a log",
    "on on on on",
    "mat",
    "the end of the story, the end",
    "\u00e9t\u00e9 caf\u00e9 \u00e9t\u00e9",
]


@pytest.mark.parametrize("ngram_max,max_tokens,min_frequency", [(2, 100000, 1), (3, 6, 2)])
def test_fast_and_textbook_paths_give_the_same_ngram_vocabulary_ids_and_weights(
    ngram_max, max_tokens, min_frequency
):
    common = dict(
        sequence_length=3,
        features=TFIDF,
        ngram_max=ngram_max,
        tfidf_max_tokens=max_tokens,
        tfidf_min_frequency=min_frequency,
    )
    fast_rows, fast_assets = analyze_and_transform(TEXTS, TextSettings(**common))
    book_rows, book_assets = analyze_and_transform(
        TEXTS, TextSettings(fast_vocabulary=False, **common)
    )
    assert fast_assets == book_assets  # the same n-gram (and token) vocabulary files, byte order
    assert len(fast_assets[NGRAM_VOCAB_NAME]) - 1 <= max_tokens  # the file ends with a newline
    for fast, book in zip(fast_rows, book_rows, strict=True):
        assert fast[TFIDF_IDS_KEY] == book[TFIDF_IDS_KEY]
        np.testing.assert_allclose(fast[TFIDF_WEIGHTS_KEY], book[TFIDF_WEIGHTS_KEY], rtol=1e-6)
        assert {k: v for k, v in fast.items() if not k.startswith("tfidf")} == {
            k: v for k, v in book.items() if not k.startswith("tfidf")
        }


def test_unknown_ngrams_share_one_id_past_the_vocabulary_and_the_whole_text_counts():
    """With a cap of 2 n-grams, every other n-gram maps to the one id 2 (tfidf_dim - 1); a text
    far longer than sequence_length still has n-grams from its end."""
    settings = TextSettings(
        sequence_length=1, features=TFIDF, ngram_max=2, tfidf_max_tokens=2, tfidf_min_frequency=1
    )
    texts = ["a a a b", "a b c d e f g h", "zz"]
    rows, assets = analyze_and_transform(texts, settings)
    vocab = [line for line in assets[NGRAM_VOCAB_NAME] if line]
    assert vocab == ["a", "b"]  # a: 4; b, "a b", "a a": 2 each, ties by bytes descending
    by_text = {r["num_tokens"][0]: r for r in rows}
    assert by_text[4][TFIDF_IDS_KEY] == [0, 1, 2]  # a, b, and "a a"/"a b" as the OOV id
    assert by_text[8][TFIDF_IDS_KEY] == [0, 1, 2]  # c..h and the bigrams: OOV, past the window
    assert by_text[1][TFIDF_IDS_KEY] == [2]  # only an unknown n-gram
    for row in rows:
        assert all(0 <= i < settings.tfidf_dim == 3 for i in row[TFIDF_IDS_KEY])
        assert math.isclose(sum(w * w for w in row[TFIDF_WEIGHTS_KEY]), 1.0, rel_tol=1e-6)


def test_tfidf_off_adds_no_outputs_and_no_ngram_vocabulary():
    rows, assets = analyze_and_transform(TEXTS[:3], TextSettings(sequence_length=3))
    assert NGRAM_VOCAB_NAME not in assets
    assert sorted(rows[0]) == ["label", "num_tokens", SPLIT_KEY, "token_ids"]


def test_l2_normalize_rows_scales_each_row_to_norm_one_and_keeps_empty_rows():
    weights = tf.SparseTensor(
        indices=[[0, 0], [0, 1], [2, 0]], values=[3.0, 4.0, 0.5], dense_shape=[3, 2]
    )
    out = l2_normalize_rows(weights)
    np.testing.assert_allclose(out.values.numpy(), [0.6, 0.8, 1.0], rtol=1e-6)
    assert out.indices.numpy().tolist() == [[0, 0], [0, 1], [2, 0]]
    assert out.dense_shape.numpy().tolist() == [3, 2]


def test_config_without_tfidf_keeps_the_keys_written_before_and_with_it_adds_the_ngram_settings():
    assert sorted(TextSettings().config()) == sorted(
        [
            "sequence_length",
            "max_tokens",
            "min_frequency",
            "num_oov_buckets",
            "lowercase",
            "strip_punctuation",
            "multi_label",
            "fast_vocabulary",
        ]
    )
    on = TextSettings(features=TFIDF, ngram_max=3, tfidf_max_tokens=50, tfidf_min_frequency=4)
    config = on.config()
    assert config["features"] == ["sequence", "tfidf"]
    assert (config["ngram_max"], config["tfidf_max_tokens"], config["tfidf_min_frequency"]) == (
        3,
        50,
        4,
    )
    assert config["tfidf_dim"] == on.tfidf_dim == 51
    assert TextSettings().tfidf_dim is None
