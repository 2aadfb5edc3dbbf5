"""The transform graph on a few rows, run with tf.Transform's own analyze-and-transform call."""

import json
import tempfile

import apache_beam as beam
import pyarrow as pa
import pytest
import tensorflow_transform.beam as tft_beam

from transforms.contracts import RAW_LABEL_KEY, SPLIT_KEY, TEXT_KEY
from transforms.corpus_io import tft_input_schema
from transforms.preprocess_graph import tensor_adapter_config
from transforms.text_preprocessing import TextSettings, make_preprocessing_fn, order_vocabulary


def _batch(texts, labels, multi_label=False):
    one = lambda values: pa.array([[v] for v in values], pa.list_(pa.string()))  # noqa: E731
    label_array = pa.array(labels, pa.list_(pa.string())) if multi_label else one(labels)
    return pa.RecordBatch.from_arrays(
        [one(texts), label_array, one(["train"] * len(texts))], schema=tft_input_schema()
    )


def analyze_and_transform(texts, labels, settings: TextSettings):
    """Run the real preprocessing_fn; return (rows as dicts, token vocabulary, label vocabulary)."""
    out_dir = tempfile.mkdtemp()
    with (
        beam.Pipeline() as p,
        tft_beam.Context(temp_dir=f"{out_dir}/tmp", passthrough_keys={SPLIT_KEY}),
    ):
        data = p | beam.Create([_batch(texts, labels, settings.multi_label)])
        adapter = tensor_adapter_config(settings.multi_label)
        (transformed, _), transform_fn = (data, adapter) | tft_beam.AnalyzeAndTransformDataset(
            make_preprocessing_fn(settings), output_record_batches=True
        )
        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
        _ = (
            transformed
            | beam.Map(lambda b: json.dumps(b[0].to_pylist()))
            | beam.io.WriteToText(f"{out_dir}/rows", shard_name_template="")
        )
    vocab = open(f"{out_dir}/transform_fn/assets/token_vocab", encoding="utf-8").read().split("\n")
    labels_vocab = (
        open(f"{out_dir}/transform_fn/assets/label_vocab", encoding="utf-8").read().split("\n")
    )
    rows = [row for line in open(f"{out_dir}/rows", encoding="utf-8") for row in json.loads(line)]
    return rows, [v for v in vocab if v], [v for v in labels_vocab if v]


TEXTS = ["b a a c", "a b", "c c d e", "A\tB  a\n", "zz yy xx", "é É ü, ü!"]
LABELS = ["x", "y", "x", "y", "x", "z"]


@pytest.fixture(scope="module")
def seq3():
    """TEXTS through the default settings, sequence_length 3 (one pipeline for several tests)."""
    return analyze_and_transform(TEXTS, LABELS, TextSettings(sequence_length=3))


def test_vocabulary_is_most_frequent_first_with_ties_by_token_descending(seq3):
    rows, vocab, _ = seq3
    # a:5, b:3, c:3, then the count-1 tokens; ties ordered by the token's bytes, descending.
    assert vocab[:3] == ["a", "c", "b"]
    assert vocab[3:] == sorted(
        vocab[3:],
        key=lambda t: (-sum(x.lower().split().count(t) for x in TEXTS), [-c for c in t.encode()]),
    )


def test_ids_start_at_one_and_padding_is_zero_and_long_texts_are_truncated(seq3):
    rows, vocab, _ = seq3
    index = {t: i + 1 for i, t in enumerate(vocab)}
    assert rows[0]["token_ids"] == [index["b"], index["a"], index["a"]]  # 4 tokens -> first 3
    assert rows[1]["token_ids"] == [index["a"], index["b"], 0]
    assert rows[0]["num_tokens"] == [4]


def test_max_tokens_and_min_frequency_cut_the_vocabulary_and_the_rest_is_oov():
    settings = TextSettings(sequence_length=4, max_tokens=2, min_frequency=2, num_oov_buckets=1)
    rows, vocab, _ = analyze_and_transform(TEXTS, LABELS, settings)
    assert vocab == ["a", "c"]
    oov = len(vocab) + 1
    assert rows[2]["token_ids"] == [2, 2, oov, oov]  # c c d e


def test_label_vocabulary_and_single_label_ids(seq3):
    rows, _, label_vocab = seq3
    assert label_vocab == ["x", "y", "z"]  # most frequent first
    assert [r["label"] for r in rows] == [[label_vocab.index(v)] for v in LABELS]


def test_multi_label_rows_become_multi_hot_and_may_have_no_label():
    labels = [["x", "y"], ["y"], [], ["x", "x"], ["z"], ["y", "z"]]
    rows, _, label_vocab = analyze_and_transform(
        TEXTS, labels, TextSettings(sequence_length=2, multi_label=True)
    )
    for row, names in zip(rows, labels):
        assert row["labels"] == [1.0 if c in names else 0.0 for c in label_vocab]
    assert rows[2]["labels"] == [0.0] * len(label_vocab)


@pytest.mark.parametrize("max_tokens,min_frequency,truncated", [(0, 1, False), (3, 2, True)])
def test_fast_vocabulary_matches_tf_transform_textbook_path(max_tokens, min_frequency, truncated):
    texts = TEXTS * 3 + ["x\x0by  z", "\u00a0nbsp inside", "tab\tand\rreturn", "  ", "UPPER lower"]
    labels = (LABELS * 3) + ["x", "y", "z", "x", "y"]
    if truncated:  # one row longer than sequence_length: the fast path cuts before looking up
        texts, labels = texts + ["a b c d e f g a b"], labels + ["z"]
    common = dict(sequence_length=5, max_tokens=max_tokens, min_frequency=min_frequency)
    fast = analyze_and_transform(texts, labels, TextSettings(fast_vocabulary=True, **common))
    textbook = analyze_and_transform(texts, labels, TextSettings(fast_vocabulary=False, **common))
    assert fast[1] == textbook[1]  # same vocabulary file, order and tie-breaking included
    assert fast[0] == textbook[0]  # same ids, lengths and labels
    assert fast[2] == textbook[2]


def test_fast_label_vocabulary_matches_textbook_for_multi_label_and_odd_names():
    """Labels counted by the fast analyzer (vocabulary file and number of classes) give the same
    multi-hot rows as tft.vocabulary, including a name with a line break, which both leave out."""
    texts = ["a b", "b c", "c d", "d e", "e f", "f g"]
    labels = [["x", "y"], ["y"], [], ["z", "x"], ["two\nlines", "y"], ["é"]]
    settings = dict(sequence_length=3, multi_label=True)
    fast = analyze_and_transform(texts, labels, TextSettings(fast_vocabulary=True, **settings))
    textbook = analyze_and_transform(texts, labels, TextSettings(fast_vocabulary=False, **settings))
    assert fast[2] == textbook[2] == ["y", "x", "é", "z"]  # ties: bytes descending
    assert fast[0] == textbook[0]
    assert [len(row["labels"]) for row in fast[0]] == [4] * len(texts)


def test_order_vocabulary_thresholds_before_top_k():
    counts = pa.table(
        {"token": pa.array([b"a", b"b", b"c", b"d"]), "count": pa.array([5, 1, 3, 3], pa.int64())}
    )
    assert order_vocabulary(counts, max_tokens=2, min_frequency=1) == [b"a", b"d"]
    assert order_vocabulary(counts, max_tokens=0, min_frequency=3) == [b"a", b"d", b"c"]


def test_strip_punctuation_turns_unicode_punctuation_and_symbols_into_spaces():
    rows, vocab, _ = analyze_and_transform(
        ["hi, there! ¿qué? 5$ e-mail"],
        ["x"],
        TextSettings(sequence_length=6, strip_punctuation=True),
    )
    assert sorted(vocab) == sorted(["hi", "there", "qué", "5", "e", "mail"])
    assert TEXT_KEY and RAW_LABEL_KEY  # keys come from contracts


def test_token_counts_merge_every_input_from_a_one_shot_iterator():
    """Beam may hand `merge_accumulators` an iterator: each counted input (tokens, labels,
    n-grams) must still get every accumulator's counts."""
    import pyarrow as pa

    from transforms.text_preprocessing import _SumTokenCounts

    def table(tokens, counts):
        return pa.table(
            {"token": pa.array(tokens, pa.binary()), "count": pa.array(counts, pa.int64())}
        )

    combine = _SumTokenCounts(((0, lambda t: t), (1, lambda t: t)))
    first = combine.add_input(
        combine.create_accumulator(), (table([b"a"], [2]), table([b"x"], [1]))
    )
    second = combine.add_input(
        combine.create_accumulator(), (table([b"a"], [1]), table([b"x"], [4]))
    )
    tokens, labels = combine.extract_output(combine.merge_accumulators(iter([first, second])))
    assert dict(zip(tokens.column("token").to_pylist(), tokens.column("count").to_pylist())) == {
        b"a": 3
    }
    assert dict(zip(labels.column("token").to_pylist(), labels.column("count").to_pylist())) == {
        b"x": 5
    }


def test_batch_counts_count_each_value_and_sum_across_offset_widths(monkeypatch):
    """The analyzer's per-batch counting (`_batch_counts`: joined values + lengths -> Arrow
    counts) and merging (`_sum_counts`), past the 64-bit-offset threshold (lowered here so a
    small batch crosses it), below it, mixed, and for an empty batch."""
    import numpy as np

    from transforms import text_preprocessing as tp

    def pair(values):
        return b"".join(values), np.array([len(v) for v in values], np.int32)

    tokens = [b"b", b"a", b"ccc", b"a", b"b", b"a"]
    labels = [b"x", b"y", b"x"]
    monkeypatch.setattr(tp, "_LARGE_TOKEN_BYTES", 8)
    big, small = tp._batch_counts((*pair(tokens), *pair(labels)))
    assert big.schema.field("token").type == pa.large_binary()  # 10 bytes joined
    assert small.schema.field("token").type == pa.binary()  # 3 bytes joined
    assert dict(zip(*big.to_pydict().values())) == {b"a": 3, b"b": 2, b"ccc": 1}
    assert dict(zip(*small.to_pydict().values())) == {b"x": 2, b"y": 1}
    (empty,) = tp._batch_counts(pair([]))
    assert empty.num_rows == 0 and empty.schema == tp._counts_schema(False)
    summed = tp._sum_counts([big, small, empty, big])
    assert sorted(zip(*summed.to_pydict().values())) == [
        (b"a", 6),
        (b"b", 4),
        (b"ccc", 2),
        (b"x", 2),
        (b"y", 1),
    ]
    assert tp.order_vocabulary(summed, 0, 1) == [b"a", b"b", b"x", b"ccc", b"y"]  # ties: bytes desc
