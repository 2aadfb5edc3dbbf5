"""The names that the stages share: feature keys and the file names of each stage's output.

Every stage, test and template check imports these, so renaming a contract is one edit here
(plus docs/DESIGN.md). This module owns names only; it reads and writes nothing.
"""

# Raw columns as the preprocess stage hands them to tf.Transform (after renaming the user's
# --text_column / --label_column to these).
TEXT_KEY = "text"
RAW_LABEL_KEY = "raw_label"  # single-label: string; multi-label: list<string>
SPLIT_KEY = "split"  # pass-through column, "train" or "eval", never part of the transform graph

# Transformed features in the TFRecords.
TOKEN_IDS_KEY = "token_ids"  # int64[sequence_length]
NUM_TOKENS_KEY = "num_tokens"  # int64 scalar: tokens in the text before padding/truncation
LABEL_KEY = "label"  # int64 scalar, single-label
LABELS_KEY = "labels"  # float32[num_classes] multi-hot, multi-label
# With `--features sequence,tfidf` (FEATURE_TFIDF): bag-of-n-grams TF-IDF, one entry per distinct
# n-gram of the whole document, ids in [0, tfidf_dim) (tfidf_dim - 1: every unknown n-gram).
TFIDF_IDS_KEY = "tfidf_ids"  # int64 VarLen
TFIDF_WEIGHTS_KEY = "tfidf_weights"  # float32 VarLen, aligned with tfidf_ids, L2 norm 1 per row

# Feature sets of `textclf preprocess --features` (sequence: token_ids and num_tokens, always).
FEATURE_SEQUENCE = "sequence"
FEATURE_TFIDF = "tfidf"

# Assets of the transform graph.
TOKEN_VOCAB_NAME = "token_vocab"
LABEL_VOCAB_NAME = "label_vocab"
NGRAM_VOCAB_NAME = "ngram_vocab"  # with FEATURE_TFIDF: the n-grams of tfidf_ids, in id order

# Splits.
TRAIN = "train"
EVAL = "eval"
SPLITS = (TRAIN, EVAL)

# Stage names (the `textclf` subcommands that write an output directory).
PREPROCESS_STAGE = "preprocess"
TRAIN_STAGE = "train"
SCORE_STAGE = "score"
STAGES = (PREPROCESS_STAGE, TRAIN_STAGE, SCORE_STAGE)

# Stage outputs (file and directory names inside an output directory).
SUCCESS_FILE = "_SUCCESS"
STATS_FILE = "stats.json"  # the same bytes on a rerun of the same input and settings
TIMINGS_FILE = "timings.json"  # preprocess: wall seconds and docs/s, which vary run to run
CONFIG_FILE = "preprocess_config.json"
TRANSFORM_FN_DIR = "transform_fn"
TRANSFORMED_METADATA_DIR = "transformed_metadata"
DEAD_LETTER_PREFIX = "dead_letter"
TFRECORD_SUFFIX = ".tfrecord.gz"
SCORED_PART_PREFIX = "part"  # score: <output>/part-SSSSS-of-NNNNN.parquet
PARQUET_SUFFIX = ".parquet"

SAVED_MODEL_DIR = "saved_model"
SAVED_MODEL_PB = "saved_model.pb"  # a SavedModel directory holds this (and variables/)
TRAINING_PROFILE_FILE = "training_profile.json"  # train: token lengths, OOV rate, label mix
LABELS_TXT = "labels.txt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
MODEL_CARD_FILE = "model_card.json"
LOGS_DIR = "logs"
# The model directory's PNG reports (the run report inlines them).
CURVES_PNG = "training_curves.png"
CONFUSION_PNG = "confusion_matrix.png"  # single-label
F1_BARS_PNG = "per_class_f1.png"  # multi-label

# Serving signature of the exported model.
SERVING_SIGNATURE = "serving_default"
SERVING_INPUT = "text"
OUT_PROBABILITIES = "probabilities"
OUT_LABEL = "label"  # single-label: string[None]
OUT_LABELS = "labels"  # multi-label: string[None, K], "" where a class is below threshold
# Input profile outputs (drift checks): int64[None] each, per row of the input text.
OUT_NUM_TOKENS = "num_tokens"  # tokens in the text (before truncation)
OUT_WINDOW_TOKENS = "window_tokens"  # tokens the model saw (the first sequence_length)
OUT_OOV_TOKENS = "oov_tokens"  # of those, tokens outside the vocabulary

# Scoring output columns.
PREDICTED_LABEL_COLUMN = "predicted_label"
PREDICTED_LABELS_COLUMN = "predicted_labels"
SCORE_COLUMN = "score"
PROBABILITIES_COLUMN = "probabilities"
MODEL_VERSION_COLUMN = "model_version"

# Dead letters: the column that says why a row was not used, and the reasons both Beam stages
# give for unusable text (preprocess adds its own reading and label reasons).
DEAD_LETTER_TAG = "dead_letter"  # the Beam stages' tagged output of unusable rows
REASON_COLUMN = "reason"
REASON_TEXT_NULL = "text is null"
REASON_TEXT_EMPTY = "text is empty"  # empty or only Unicode whitespace
REASON_TEXT_NOT_STRING = "text is not a string"
REASON_TEXT_NOT_UTF8 = "text is not valid UTF-8"
REASON_LABEL_MISSING = "label is missing"
REASON_LABEL_NOT_UTF8 = "label is not valid UTF-8"
REASON_LABEL_LINE_BREAK = "label has a line break"  # a vocabulary file holds one name per line

# Runs: `textclf run` writes each stage's output to <root>/<run_date>/<STAGE_DIRS[stage]>.
STAGE_DIRS = {PREPROCESS_STAGE: "data", TRAIN_STAGE: "model", SCORE_STAGE: "scores"}
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.html"
RUN_LOCK_FILE = ".run.lock"  # flock()ed by the run that holds <root>/<run_date>; never removed

# Model registry (pipeline/registry.py): <root>/<N>/ is version N in the layout TF Serving
# loads (saved_model.pb, variables/, assets/ directly inside, textclf's metadata files beside
# them); <root>/CHAMPION names the version in use; versions are never overwritten.
CHAMPION_FILE = "CHAMPION"
CHAMPION_HISTORY_FILE = "CHAMPION.history"  # one JSON line per pointer write, oldest first
REGISTRY_RECORD_FILE = "registry.json"  # in <root>/<N>/: where the version came from, its gate
REGISTRY_LOCK_FILE = ".registry.lock"  # flock()ed while a version is published or promoted
PROMOTION_FILE = "promotion.json"  # in a run directory: the gate's decision for its model

# Beam metrics namespace of the preprocess stage (counters logged at the end of a run).
PREPROCESS_METRICS = "textclf.preprocess"

# Exit code for bad input detected before any pipeline work.
EXIT_BAD_INPUT = 2
# Exit code of `textclf score --fail_on_drift` when drift was found (the output is complete).
EXIT_DRIFT = 3

# Score: the dead-letter reason of a row the model call failed on (isolated by bisecting the
# failing batch). The full reason is "model call failed (model_version V): ErrorType: <the error
# message's first line, at most 200 characters>"; stats.json counts these rows under
# `rows_failed_model_call` and --max_dead_letter_fraction caps them.
REASON_MODEL_CALL_FAILED = "model call failed"
