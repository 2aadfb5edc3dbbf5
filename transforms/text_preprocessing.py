"""The tf.Transform side of preprocessing: normalize, tokenize, vocabulary, ids, padding, labels.

`make_preprocessing_fn(settings)` returns the pure `preprocessing_fn` that becomes the transform
graph (and, inside the exported model, the serving-time preprocessing). Two vocabulary paths give
the same graph and the same asset:

* fast (default): each batch's tokens leave the graph as one joined string and their lengths,
  and are counted and summed by `CountTokensAndWriteVocabulary`, a Beam PTransform plugged in
  with `tft.experimental.ptransform_analyzer`, as Arrow tables (group_by) instead of
  tf.Transform's per-token Python combine;
  the ids come from `tft.apply_vocabulary` over that file, an asset of the graph.
  The label vocabulary (and the n-gram one) is counted the same way, by the same analyzer in
  the same combine: each analyzer adds a dozen Beam transforms and two stages, a fixed cost
  of every run (the textbook path's `tft.vocabulary` counts labels one by one in Python and
  adds about ten Beam stages).
* textbook: `tft.compute_and_apply_vocabulary` and `tft.vocabulary`, kept to prove the fast
  path gives identical output (tests) and to measure against (benchmarks).

Both order the vocabulary as tf.Transform does: count descending, ties broken by the token's
bytes descending; `min_frequency` filters before `max_tokens` cuts. Id 0 is padding, 1..V the
vocabulary, V+1..V+B the OOV buckets.

With `features` holding `tfidf`, the graph also writes bag-of-n-grams TF-IDF features
(`_tfidf`): n-grams 1..`ngram_max` of the whole document (`tft.ngrams`, not cut to
`sequence_length`), their own vocabulary (`ngram_vocab`, counted by either path above), and
`tft.tfidf` weights, L2-normalised per document. This module owns no I/O beyond the vocabulary
assets.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam

from transforms.contracts import (
    FEATURE_SEQUENCE,
    FEATURE_TFIDF,
    LABEL_KEY,
    LABEL_VOCAB_NAME,
    LABELS_KEY,
    NGRAM_VOCAB_NAME,
    NUM_TOKENS_KEY,
    RAW_LABEL_KEY,
    TEXT_KEY,
    TFIDF_IDS_KEY,
    TFIDF_WEIGHTS_KEY,
    TOKEN_IDS_KEY,
    TOKEN_VOCAB_NAME,
)

# Unicode punctuation and symbols.
_PUNCTUATION = r"[\pP\pS]"


# The feature sets a preprocess output can hold; `sequence` always (the seed model and the drift
# profile read token_ids and num_tokens).
FEATURES = (FEATURE_SEQUENCE, FEATURE_TFIDF)
# The settings that only the TF-IDF features use (left out of the config when they are off).
_TFIDF_SETTINGS = ("ngram_max", "tfidf_max_tokens", "tfidf_min_frequency")


@dataclasses.dataclass(frozen=True)
class TextSettings:
    """What the transform graph needs to know; stored in preprocess_config.json (`config()`)."""

    sequence_length: int = 100
    max_tokens: int = 20000  # 0: no cap
    min_frequency: int = 1
    num_oov_buckets: int = 1
    lowercase: bool = True
    strip_punctuation: bool = False
    multi_label: bool = False
    fast_vocabulary: bool = True
    features: tuple[str, ...] = (FEATURE_SEQUENCE,)
    ngram_max: int = 2  # n-grams of 1..ngram_max tokens
    tfidf_max_tokens: int = 100000  # the n-gram vocabulary's top k by corpus count
    tfidf_min_frequency: int = 2  # n-grams seen fewer times are left out (before the top k)

    @property
    def tfidf(self) -> bool:
        return FEATURE_TFIDF in self.features

    @property
    def tfidf_dim(self) -> int | None:
        """Ids of `tfidf_ids` are in [0, tfidf_dim): the vocabulary, then one OOV id at
        `tfidf_max_tokens`, whatever the vocabulary's actual size; None without TF-IDF."""
        return self.tfidf_max_tokens + 1 if self.tfidf else None

    def config(self) -> dict:
        """The settings as preprocess_config.json holds them. Without TF-IDF, exactly the keys
        written before it existed (so a default run's files keep their bytes); with it, also
        `features`, the n-gram settings and `tfidf_dim`."""
        config = dataclasses.asdict(self)
        if not self.tfidf:
            for key in ("features", *_TFIDF_SETTINGS):
                del config[key]
            return config
        return dict(config, features=list(self.features), tfidf_dim=self.tfidf_dim)


def normalize_text(text: tf.Tensor, settings: TextSettings) -> tf.Tensor:
    """Lowercase (Unicode) and optionally turn punctuation and symbols into spaces.

    Spaces, not deletion as Keras's TextVectorization does: "state-of-the-art" gives four
    common tokens rather than one rare one. On 20 Newsgroups (seed model, 8 epochs) spaces gave
    76.1% test accuracy against 73.0% for deletion, one run each.
    """
    if settings.lowercase:
        text = tf.strings.lower(text, encoding="utf-8")
    if settings.strip_punctuation:
        text = tf.strings.regex_replace(text, _PUNCTUATION, " ")
    return text


def tokenize(normalized: tf.Tensor) -> tf.RaggedTensor:
    """Split on runs of ASCII whitespace (space, \\t, \\n, \\v, \\f, \\r); no empty tokens."""
    return tf.strings.split(normalized)


def _counts_schema(large: bool) -> pa.Schema:
    return pa.schema(
        [("token", pa.large_binary() if large else pa.binary()), ("count", pa.int64())]
    )


# Token bytes past which counts switch to 64-bit offsets (Arrow's binary type holds < 2 GiB per
# array); below it they stay 32-bit, whose hash aggregation is much faster.
_LARGE_TOKEN_BYTES = 1 << 30


def _batch_counts(batch: tuple) -> tuple[pa.Table, ...]:
    """One analyzer batch -> an Arrow table (token, count) per counted input.

    The batch holds, per input, (its values joined into one string, their byte lengths), as
    `_batch_values` returns them: one bytes object and one numeric array, so neither TensorFlow
    nor pyarrow makes a Python object per token (that took more time than counting them); the
    joined string becomes the Arrow array's data buffer as it is, and Arrow's hash group_by
    counts it (about twice as fast as `tf.unique_with_counts` in the graph, measured).
    """
    return tuple(_counts_table(*batch[i : i + 2]) for i in range(0, len(batch), 2))


def _counts_table(joined, lengths) -> pa.Table:
    joined = joined.item() if isinstance(joined, np.ndarray) else joined
    large = len(joined) >= _LARGE_TOKEN_BYTES
    offsets = np.zeros(len(lengths) + 1, np.int64 if large else np.int32)
    np.cumsum(lengths, out=offsets[1:])
    schema = _counts_schema(large)
    tokens = pa.Array.from_buffers(
        schema.field("token").type,
        len(lengths),
        [None, pa.py_buffer(offsets), pa.py_buffer(joined)],
    )
    counts = pa.table([tokens], names=["token"]).group_by("token").aggregate([([], "count_all")])
    return counts.rename_columns(["token", "count"]).cast(schema).combine_chunks()


def _sum_counts(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return _counts_schema(False).empty_table()
    if len(tables) == 1:
        return tables[0]
    schema = _counts_schema(sum(t.column("token").nbytes for t in tables) >= _LARGE_TOKEN_BYTES)
    merged = pa.concat_tables([t.cast(schema) for t in tables])
    merged = merged.group_by("token").aggregate([("count", "sum")])
    # group_by hands back chunks of ~32k rows that view shared buffers, and pickling writes
    # each chunk's whole buffers: 18x the table's bytes for 580k n-grams, past gRPC's 2 GiB
    # per element at 300k documents. One chunk pickles at its own size.
    return merged.rename_columns(["token", "count"]).combine_chunks()


class _SumTokenCounts(beam.CombineFn):
    """Token counts as Arrow tables; merges re-aggregate with group_by, never per token.

    Elements are tuples of tables, one per counted input (a batch's tokens, labels, n-grams);
    each position is summed apart. `finishes` are (input position, function) pairs: each
    function turns its input's summed table into one output, inside the combine, so what
    leaves it is small (a path, a size), not a table of every distinct token: a large
    PCollection element costs more to hand between stages than to compute. The output is the
    tuple of the functions' results, or the one result when there is one function.
    """

    _MERGE_EVERY = 32  # batches held (per input) before folding them into one table

    def __init__(self, finishes: tuple):
        self._finishes = finishes
        self._inputs = 1 + max(position for position, _ in finishes)

    def create_accumulator(self):
        return tuple([] for _ in range(self._inputs))

    def add_input(self, acc, tables):
        for held, table in zip(acc, tables):
            held.append(table)
        if len(acc[0]) >= self._MERGE_EVERY:
            return self.compact(acc)
        return acc

    def merge_accumulators(self, accs):
        accs = list(accs)  # Beam may pass a one-shot iterator; each input position reads it
        return tuple(
            [_sum_counts([t for acc in accs for t in acc[i]])] for i in range(self._inputs)
        )

    def compact(self, acc):
        return tuple([_sum_counts(held)] for held in acc)

    def extract_output(self, acc):
        summed = [_sum_counts(held) for held in acc]
        outputs = tuple(finish(summed[position]) for position, finish in self._finishes)
        return outputs[0] if len(outputs) == 1 else outputs


def _split_outputs(outputs: tuple):
    """`_SumTokenCounts`' tuple of outputs -> one tagged output per position."""
    for position, output in enumerate(outputs):
        yield beam.pvalue.TaggedOutput(str(position), output)


def order_vocabulary(counts: pa.Table, max_tokens: int, min_frequency: int) -> list[bytes]:
    """tf.Transform's order: count descending, then token bytes descending; threshold, then top-k."""
    if min_frequency > 1:
        counts = counts.filter(pc.greater_equal(counts["count"], min_frequency))
    order = [("count", "descending"), ("token", "descending")]
    if max_tokens and counts.num_rows > max_tokens:
        # Tokens are distinct, so the top k by (count, token) is one set: select, then sort it.
        counts = counts.take(pc.select_k_unstable(counts, max_tokens, order))
    return counts.sort_by(order).column("token").to_pylist()


@dataclasses.dataclass(frozen=True)
class VocabularyFile:
    """One vocabulary `CountTokensAndWriteVocabulary` writes: its file name (the asset's name in
    the transform graph), its top k (0: all) and the count below which values are left out."""

    filename: str
    max_tokens: int = 0
    min_frequency: int = 1


def write_vocabulary(base_dir: str, vocabulary: VocabularyFile, counts: pa.Table) -> np.ndarray:
    """Write `counts` as `vocabulary`'s file, in tf.Transform's order, in a fresh folder under
    `base_dir`; return its path (the analyzer's output)."""
    tokens = order_vocabulary(counts, vocabulary.max_tokens, vocabulary.min_frequency)
    if not tokens:
        # Like tf.Transform: an empty vocabulary would break the lookup table's init.
        tokens = [b"__dummy_value__"]
    directory = os.path.join(base_dir, uuid.uuid4().hex)
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, vocabulary.filename)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(b"\n".join(tokens) + b"\n")
    return np.array(path.encode("utf-8"), dtype=object)


class CountTokensAndWriteVocabulary(tft_beam.experimental.PTransformAnalyzer):
    """A tf.Transform analyzer: per-batch values of one or more inputs -> one vocabulary file's
    path per input.

    Input elements are tuples of ndarrays, as tf.Transform hands them to `ptransform_analyzer`:
    two per input (`_batch_values`' joined values and their lengths); each batch is counted,
    and the batches summed, as Arrow tables. The output is one PCollection per input (a tuple of
    them for several) holding one element, the file path, which becomes an asset of the
    transform graph. The stage's vocabularies (tokens, labels, n-grams) are counted by one such
    analyzer, so by one combine: each analyzer costs a few Beam stages and a dozen transforms
    of fixed cost per run, whatever the corpus size.
    """

    def __init__(self, vocabularies: tuple[VocabularyFile, ...]):
        super().__init__()
        self._vocabularies = vocabularies

    def expand(self, pcoll):
        finishes = tuple(
            (i, functools.partial(write_vocabulary, self.base_temp_dir, vocabulary))
            for i, vocabulary in enumerate(self._vocabularies)
        )
        paths = (
            pcoll
            | "BatchCounts" >> beam.Map(_batch_counts)
            | "SumCountsAndWrite" >> beam.CombineGlobally(_SumTokenCounts(finishes))
        )
        if len(finishes) == 1:
            return paths
        split = paths | "SplitPaths" >> beam.FlatMap(_split_outputs).with_outputs(
            *(str(i) for i in range(len(finishes)))
        )
        return tuple(split[str(i)] for i in range(len(finishes)))


# What tf.Transform's text vocabularies leave out: empty strings and anything with a line break
# (tensorflow_transform.analyzers._EMPTY_STRING_OR_NEWLINE_CHARS_REGEX); one per line otherwise.
_NOT_A_VOCABULARY_LINE = r"^$|\C*[\n\r]\C*"


def _batch_values(values: tf.Tensor, may_break_lines: bool) -> list[tf.Tensor]:
    """A batch's values joined into one string, with their byte lengths (the vocabulary
    analyzers' inputs; see `_batch_counts`)."""
    if may_break_lines:
        values = tf.boolean_mask(
            values, tf.logical_not(tf.strings.regex_full_match(values, _NOT_A_VOCABULARY_LINE))
        )
    return [tf.strings.reduce_join(values), tf.strings.length(values, unit="BYTE")]


def fast_vocabularies(
    values: list[list[tf.Tensor]], vocabularies: tuple[VocabularyFile, ...]
) -> list[tf.Tensor]:
    """The vocabularies of flat string tensors, each handed out per batch by the graph
    (`_batch_values`) and all counted by one `CountTokensAndWriteVocabulary`: returns each
    vocabulary file's path (a graph tensor), in the order given.

    Each file is the same as `tft.vocabulary(values, top_k, frequency_threshold,
    vocab_filename)` over the same values.
    """
    return tft.experimental.ptransform_analyzer(
        inputs=[tensor for pair in values for tensor in pair],
        ptransform=CountTokensAndWriteVocabulary(vocabularies),
        output_dtypes=[tf.string] * len(vocabularies),
        output_shapes=[[]] * len(vocabularies),
        output_asset_default_values=[b"__dummy_value__"] * len(vocabularies),
        name="vocabularies",
    )


def _label_values(raw_label) -> tf.Tensor:
    values = raw_label.values if isinstance(raw_label, tf.SparseTensor) else raw_label
    return tf.reshape(values, [-1])


def _fast_vocabulary_paths(tokens, raw_label, ngrams, settings: TextSettings) -> dict:
    """{asset name: path} of the token, label (and n-gram) vocabularies, counted together;
    also {"label_values": ...}, the label batch's values as counted, for `CountDistinct`.

    Tokens and n-grams (whitespace-split tokens joined by a space) are never empty and never
    hold a line break, so tf.Transform's filter of such values (a regex over every value) runs
    over the labels only.
    """
    label_values = _batch_values(_label_values(raw_label), may_break_lines=True)
    values = [_batch_values(tokens.flat_values, may_break_lines=False), label_values]
    vocabularies = [
        VocabularyFile(TOKEN_VOCAB_NAME, settings.max_tokens, settings.min_frequency),
        VocabularyFile(LABEL_VOCAB_NAME),
    ]
    if ngrams is not None:
        values.append(_batch_values(ngrams.values, may_break_lines=False))
        vocabularies.append(
            VocabularyFile(
                NGRAM_VOCAB_NAME, settings.tfidf_max_tokens, settings.tfidf_min_frequency
            )
        )
    paths = fast_vocabularies(values, tuple(vocabularies))
    found = {vocabulary.filename: path for vocabulary, path in zip(vocabularies, paths)}
    return dict(found, label_values=label_values)


def _token_ids(tokens: tf.RaggedTensor, settings: TextSettings, vocab_path) -> tf.RaggedTensor:
    """Vocabulary ids (0-based, OOV buckets after the vocabulary) of each row's tokens.

    The fast path (`vocab_path` given) looks up only the first `sequence_length` tokens of a
    row (the rest are cut anyway); the textbook path is `tft.compute_and_apply_vocabulary` as
    written in its guide.
    """
    if vocab_path is not None:
        # Truncating copies every kept token, so it is done only for batches that need it.
        length = settings.sequence_length
        kept = tf.cond(
            tf.reduce_max(tokens.row_lengths()) > length,
            lambda: tokens[:, :length],
            lambda: tokens,
        )
        return tft.apply_vocabulary(
            kept, vocab_path, num_oov_buckets=settings.num_oov_buckets, file_format="text"
        )
    return tft.compute_and_apply_vocabulary(
        tokens,
        top_k=settings.max_tokens or None,
        frequency_threshold=settings.min_frequency if settings.min_frequency > 1 else None,
        num_oov_buckets=settings.num_oov_buckets,
        vocab_filename=TOKEN_VOCAB_NAME,
    )


class CountDistinct(beam.PTransform):
    """A tf.Transform analyzer: per-batch values -> how many distinct values.

    The size of a vocabulary counted by `fast_vocabulary` (without top_k or a frequency
    threshold); a constant in the final graph, so shapes that depend on it are static.
    """

    def expand(self, pcoll):
        return (
            pcoll
            | "BatchCounts" >> beam.Map(_batch_counts)
            | "SumCountsAndSize" >> beam.CombineGlobally(_SumTokenCounts(((0, _num_rows),)))
        )


def _num_rows(counts: pa.Table) -> np.int64:
    return np.int64(counts.num_rows)


def _multi_hot(class_ids: tf.SparseTensor, num_classes: tf.Tensor) -> tf.Tensor:
    """[batch, num_classes] float 0/1 from each row's class ids (-1: not a class)."""
    hot = tf.one_hot(tf.RaggedTensor.from_sparse(class_ids), depth=tf.cast(num_classes, tf.int32))
    return tf.minimum(tf.reduce_sum(hot, axis=1), 1.0)


def _labels(raw_label, settings: TextSettings, fast: dict | None) -> dict:
    """The label outputs: class id (single-label) or multi-hot vector (multi-label). `fast`:
    `_fast_vocabulary_paths`' result (the fast path), or None (the textbook path)."""
    if fast is None:
        vocab = tft.vocabulary(raw_label, vocab_filename=LABEL_VOCAB_NAME)
        class_ids = tft.apply_vocabulary(raw_label, vocab)
        if not settings.multi_label:
            return {LABEL_KEY: class_ids}
        num_classes = tft.experimental.get_vocabulary_size_by_name(LABEL_VOCAB_NAME)
        return {LABELS_KEY: _multi_hot(class_ids, num_classes)}
    class_ids = tft.apply_vocabulary(raw_label, fast[LABEL_VOCAB_NAME])
    if not settings.multi_label:
        return {LABEL_KEY: class_ids}
    (num_classes,) = tft.experimental.ptransform_analyzer(
        inputs=fast["label_values"],
        ptransform=CountDistinct(),
        output_dtypes=[tf.int64],
        output_shapes=[[]],
        name="num_classes",
    )
    return {LABELS_KEY: _multi_hot(class_ids, num_classes)}


def _ngram_ids(ngrams: tf.SparseTensor, settings: TextSettings, vocab_path) -> tf.SparseTensor:
    """Each n-gram's id in the n-gram vocabulary; -1 outside it (`tft.tfidf` folds that into the
    one OOV id). Fast (`vocab_path` given): counted with the other vocabularies; textbook:
    `tft.compute_and_apply_vocabulary`.
    """
    if vocab_path is not None:
        return tft.apply_vocabulary(ngrams, vocab_path, default_value=-1, file_format="text")
    return tft.compute_and_apply_vocabulary(
        ngrams,
        default_value=-1,
        top_k=settings.tfidf_max_tokens,
        frequency_threshold=(
            settings.tfidf_min_frequency if settings.tfidf_min_frequency > 1 else None
        ),
        vocab_filename=NGRAM_VOCAB_NAME,
    )


def l2_normalize_rows(weights: tf.SparseTensor) -> tf.SparseTensor:
    """Each row's values divided by the row's L2 norm (sklearn's TfidfVectorizer default), so a
    long document and a short one on the same topic get comparable vectors."""
    rows = weights.indices[:, 0]
    squares = tf.math.unsorted_segment_sum(
        tf.square(weights.values), rows, tf.cast(weights.dense_shape[0], tf.int32)
    )
    norms = tf.gather(tf.sqrt(squares), rows)
    return tf.SparseTensor(
        weights.indices, tf.math.divide_no_nan(weights.values, norms), weights.dense_shape
    )


def _ngrams(tokens: tf.RaggedTensor, settings: TextSettings) -> tf.SparseTensor:
    """N-grams of 1 to `ngram_max` tokens of each whole document, joined by a space."""
    return tft.ngrams(tokens.to_sparse(), (1, settings.ngram_max), separator=" ")


def _tfidf(ngrams: tf.SparseTensor, settings: TextSettings, vocab_path) -> dict:
    """Bag-of-n-grams TF-IDF of each whole document: {tfidf_ids, tfidf_weights}, aligned
    VarLen lists with one entry per distinct n-gram (ids ascending).

    Weights are `tft.tfidf`'s (n-gram count / the document's n-grams * (log((1 + N) / (1 + df))
    + 1), with N the documents analyzed and df those holding the n-gram), then L2-normalised.
    Ids outside the vocabulary are -1 until `tft.tfidf` takes them modulo `tfidf_dim`: all
    unknown n-grams share the one id `tfidf_max_tokens`.
    """
    ids, weights = tft.tfidf(_ngram_ids(ngrams, settings, vocab_path), settings.tfidf_dim)
    return {TFIDF_IDS_KEY: ids, TFIDF_WEIGHTS_KEY: l2_normalize_rows(weights)}


def make_preprocessing_fn(settings: TextSettings):
    """The pure tf.Transform function for these settings (text -> token_ids, labels, and with
    `tfidf` in `settings.features`, tfidf_ids and tfidf_weights)."""

    def preprocessing_fn(inputs: dict) -> dict:
        tokens = tokenize(normalize_text(inputs[TEXT_KEY], settings))
        ngrams = _ngrams(tokens, settings) if settings.tfidf else None
        fast = (
            _fast_vocabulary_paths(tokens, inputs[RAW_LABEL_KEY], ngrams, settings)
            if settings.fast_vocabulary
            else None
        )
        token_vocab = fast[TOKEN_VOCAB_NAME] if fast else None
        ids = _token_ids(tokens, settings, token_vocab) + 1  # 0 is reserved for padding
        outputs = {
            TOKEN_IDS_KEY: ids.to_tensor(default_value=0, shape=[None, settings.sequence_length]),
            NUM_TOKENS_KEY: tokens.row_lengths(),
        }
        outputs.update(_labels(inputs[RAW_LABEL_KEY], settings, fast))
        if settings.tfidf:
            outputs.update(_tfidf(ngrams, settings, fast[NGRAM_VOCAB_NAME] if fast else None))
        return outputs

    return preprocessing_fn
