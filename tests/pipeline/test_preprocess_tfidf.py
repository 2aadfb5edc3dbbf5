"""`textclf preprocess --features sequence,tfidf` on small real files with the in-process runner:
hand-computed TF-IDF in the TFRecords, the transform graph serving the same features from raw
text, the textbook vocabulary path giving the same, the config and its reader, and the flags
refused before any work (exit 2). The default run (`--features sequence`) writes no TF-IDF."""

import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from pipeline import preprocess
from pipeline.artifacts import PreprocessOutput
from tests.stage_outputs import read_examples, read_lines
from transforms.contracts import (
    CONFIG_FILE,
    EXIT_BAD_INPUT,
    NGRAM_VOCAB_NAME,
    NUM_TOKENS_KEY,
    TEXT_KEY,
    TFIDF_IDS_KEY,
    TFIDF_WEIGHTS_KEY,
    TOKEN_IDS_KEY,
    TOKEN_VOCAB_NAME,
)

RUNNER = "--runner=FnApiRunner"  # Beam's in-process runner, as `preprocess` uses with no --runner

# Three documents; sequence_length 2 keeps only two tokens per row in token_ids, while the
# TF-IDF features count every n-gram of the whole text.
DOCS = ["Red fish blue fish", "one fish two fish", "red fish"]
TFIDF_ARGV = ["--features", "sequence,tfidf", "--ngram_max", "2", "--tfidf_max_tokens", "100"]
TFIDF_ARGV += ["--tfidf_min_frequency", "2"]


def run(tmp_path, name, argv):
    out = str(tmp_path / name)
    return preprocess.main([*argv, "--output_dir", out]), out


def hand_computed() -> list[dict]:
    """{n-gram (None: the OOV id): weight} per document, worked out by hand.

    N-grams (unigrams and bigrams) with their corpus counts: fish 5, red 2, "red fish" 2, and
    blue, "fish blue", "blue fish", one, two, "one fish", "fish two", "two fish" once each. With
    --tfidf_min_frequency 2 the vocabulary is fish, "red fish", red (count, then bytes
    descending); everything else is the one OOV id. Per document, tf = count / the document's
    n-grams (OOV included), idf = ln((1 + N) / (1 + df)) + 1 with N = 3 documents, then the
    document's weights are divided by their L2 norm.
    """
    idf = {df: math.log((1 + 3) / (1 + df)) + 1 for df in (1, 2, 3)}
    df = {"fish": 3, "red": 2, "red fish": 2, None: 2}  # OOV: documents 1 and 2
    counts = [
        # red fish blue fish: red, fish, blue, fish, red fish, fish blue, blue fish (7)
        ({"fish": 2, "red": 1, "red fish": 1, None: 3}, 7),
        # one fish two fish: one, fish, two, fish, one fish, fish two, two fish (7)
        ({"fish": 2, None: 5}, 7),
        # red fish: red, fish, red fish (3)
        ({"fish": 1, "red": 1, "red fish": 1}, 3),
    ]
    expected = []
    for terms, length in counts:
        raw = {t: c / length * idf[df[t]] for t, c in terms.items()}
        norm = math.sqrt(sum(w * w for w in raw.values()))
        expected.append({t: w / norm for t, w in raw.items()})
    return expected


def _corpus(tmp_path) -> str:
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": DOCS, "label": ["a", "b", "a"]}), path)
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same corpus preprocessed three ways (one record batch per row, so every analyzer
    sums over batches): with TF-IDF (fast path), with TF-IDF (textbook path), and by default."""
    tmp = tmp_path_factory.mktemp("tfidf")
    base = ["--input", _corpus(tmp), "--sequence_length", "2", "--eval_fraction", "0"]
    base += ["--batch_rows", "1", RUNNER]
    out = {}
    for name, extra in {
        "fast": TFIDF_ARGV,
        "textbook": [*TFIDF_ARGV, "--vocabulary_path", "textbook"],
        "default": [],
    }.items():
        code, out[name] = run(tmp, name, base + extra)
        assert code == 0, name
    return out


def by_doc(out: str) -> list[dict]:
    """The train split's examples in DOCS order (told apart by num_tokens and first token)."""
    vocab = read_lines(f"{out}/transform_fn/assets/{TOKEN_VOCAB_NAME}")
    keyed = {
        (e[NUM_TOKENS_KEY][0], vocab[e[TOKEN_IDS_KEY][0] - 1]): e
        for e in read_examples(out, "train")
    }
    return [keyed[(len(d.split()), d.split()[0].lower())] for d in DOCS]


@pytest.mark.slow
def test_tfrecords_hold_the_hand_computed_tfidf_of_the_whole_text(runs):
    out = runs["fast"]
    ngrams = read_lines(f"{out}/transform_fn/assets/{NGRAM_VOCAB_NAME}")
    assert ngrams == ["fish", "red fish", "red"]
    oov = 100  # --tfidf_max_tokens: the one OOV id, whatever the vocabulary's size
    for example, expected in zip(by_doc(out), hand_computed(), strict=True):
        ids, weights = example[TFIDF_IDS_KEY], example[TFIDF_WEIGHTS_KEY]
        assert ids == sorted(ids) and len(ids) == len(weights)
        got = {(None if i == oov else ngrams[i]): w for i, w in zip(ids, weights, strict=True)}
        assert got.keys() == expected.keys()
        for term, weight in expected.items():
            assert got[term] == pytest.approx(weight, rel=1e-6), term
        assert len(example[TOKEN_IDS_KEY]) == 2  # the sequence is cut; the n-grams were not


@pytest.mark.slow
def test_config_and_reader_describe_the_tfidf_features(runs):
    config = json.load(open(os.path.join(runs["fast"], CONFIG_FILE)))
    assert config["features"] == ["sequence", "tfidf"]
    assert (config["ngram_max"], config["tfidf_max_tokens"], config["tfidf_min_frequency"]) == (
        2,
        100,
        2,
    )
    assert config["tfidf_dim"] == 101 and config["ngram_vocab_size"] == 3
    data = PreprocessOutput(runs["fast"]).check_complete()
    assert (data.features, data.tfidf_dim, data.ngram_max) == (("sequence", "tfidf"), 101, 2)
    spec = data.tft_output.transformed_feature_spec()
    assert spec[TFIDF_IDS_KEY] == tf.io.VarLenFeature(tf.int64)
    assert spec[TFIDF_WEIGHTS_KEY] == tf.io.VarLenFeature(tf.float32)


@pytest.mark.slow
def test_the_transform_graph_serves_the_same_tfidf_from_raw_text(runs):
    data = PreprocessOutput(runs["fast"])
    layer = data.tft_output.transform_features_layer()
    served = layer({TEXT_KEY: tf.constant(DOCS)})
    ids = tf.RaggedTensor.from_sparse(served[TFIDF_IDS_KEY]).to_list()
    weights = tf.RaggedTensor.from_sparse(served[TFIDF_WEIGHTS_KEY]).to_list()
    for i, example in enumerate(by_doc(runs["fast"])):
        assert ids[i] == example[TFIDF_IDS_KEY]
        np.testing.assert_allclose(weights[i], example[TFIDF_WEIGHTS_KEY], rtol=1e-6)
    # A text never seen: its known n-grams keep their ids, the rest fall on the OOV id.
    unseen = layer({TEXT_KEY: tf.constant(["Fish and chips"])})
    assert tf.RaggedTensor.from_sparse(unseen[TFIDF_IDS_KEY]).to_list() == [[0, 100]]


@pytest.mark.slow
def test_the_textbook_vocabulary_path_writes_the_same_tfidf_and_ngram_vocabulary(runs):
    fast, book = runs["fast"], runs["textbook"]
    for name in (NGRAM_VOCAB_NAME, TOKEN_VOCAB_NAME):
        assert read_lines(f"{fast}/transform_fn/assets/{name}") == read_lines(
            f"{book}/transform_fn/assets/{name}"
        )
    for a, b in zip(by_doc(fast), by_doc(book), strict=True):
        assert a[TFIDF_IDS_KEY] == b[TFIDF_IDS_KEY]
        np.testing.assert_allclose(a[TFIDF_WEIGHTS_KEY], b[TFIDF_WEIGHTS_KEY], rtol=1e-6)


@pytest.mark.slow
def test_the_default_run_writes_no_tfidf_and_the_same_sequence_features(runs):
    default, fast = runs["default"], runs["fast"]
    examples = by_doc(default)
    assert all(sorted(e) == ["label", NUM_TOKENS_KEY, TOKEN_IDS_KEY] for e in examples)
    assert not os.path.exists(f"{default}/transform_fn/assets/{NGRAM_VOCAB_NAME}")
    config = json.load(open(os.path.join(default, CONFIG_FILE)))
    assert not {"features", "ngram_max", "tfidf_dim", "ngram_vocab_size"} & set(config)
    data = PreprocessOutput(default).check_complete()
    assert (data.features, data.tfidf_dim, data.ngram_max) == (("sequence",), None, None)
    for plain, with_tfidf in zip(examples, by_doc(fast), strict=True):
        assert plain == {k: v for k, v in with_tfidf.items() if not k.startswith("tfidf")}


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--features", "tfidf"],
            "--features must include sequence (the model and the drift profile read token_ids); "
            "e.g. --features sequence,tfidf",
        ),
        (
            ["--features", "sequence,bow"],
            "--features: unknown feature set 'bow'; choose from sequence, tfidf",
        ),
        (
            ["--features", "sequence,tfidf", "--ngram_max", "0"],
            "--ngram_max must be at least 1 (1: single tokens only)",
        ),
        (
            ["--tfidf_min_frequency", "0"],
            "--tfidf_max_tokens and --tfidf_min_frequency must be at least 1",
        ),
    ],
)
def test_bad_feature_flags_are_refused_before_any_work_with_exit_2(tmp_path, capsys, argv, message):
    code, out = run(tmp_path, "out", ["--input", _corpus(tmp_path), *argv, RUNNER])
    assert code == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == f"textclf preprocess: {message}"
    assert not os.path.exists(out)
