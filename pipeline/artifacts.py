"""Readers of the stages' output directories: one object per directory, handing out what the
next stage needs.

Modelled on tf.Transform's `TFTransformOutput`: `PreprocessOutput(dir)` is what `textclf train`
and `describe` read (the config, the row counts of stats.json, the TFRecord patterns, the
transform graph); `ModelOutput(dir)` what `score`, `describe`, `run` and the report read (the
card, labels, metrics, the SavedModel and how to score with it); `ScoreOutput(dir)` what `run`
reads (stats.json, the part and dead-letter files). Each knows its stage's layout (docs/DESIGN.md;
the names are defined in transforms/contracts.py), reads a file only when asked for what it holds,
and says in one line what is wrong and what to do (`IncompleteOutput`, which the commands report
as bad input, exit 2) when a directory is unfinished or lacks what the next stage needs. This
module only reads, on any Beam filesystem; writing and finalizing outputs is pipeline/outputs.py's.
"""

from __future__ import annotations

import datetime as _dt
import functools
from typing import ClassVar

from apache_beam.io.filesystems import FileSystems

from pipeline import outputs
from transforms.contracts import (
    CONFIG_FILE,
    DEAD_LETTER_PREFIX,
    FEATURE_SEQUENCE,
    FEATURE_TFIDF,
    HISTORY_FILE,
    LABELS_TXT,
    METRICS_FILE,
    MODEL_CARD_FILE,
    PARQUET_SUFFIX,
    PREPROCESS_STAGE,
    SAVED_MODEL_DIR,
    SCORE_STAGE,
    SCORED_PART_PREFIX,
    STATS_FILE,
    SUCCESS_FILE,
    TFRECORD_SUFFIX,
    TRAIN_STAGE,
)

# Keys of preprocess_config.json that training (and `describe`) rely on.
REQUIRED_CONFIG_KEYS = (
    "multi_label",
    "sequence_length",
    "id_vocabulary_size",
    "num_classes",
    "label_vocabulary",
)


class IncompleteOutput(ValueError):
    """A stage output the next stage cannot use: unfinished (no `_SUCCESS`), or without a file
    its layout promises. The message names the directory and says what to do."""


class StageOutput:
    """What every stage output has: a directory that is finished once `_SUCCESS` is in it."""

    stage: ClassVar[str]
    # The end of the "not finished" message: what the user should do about it.
    to_finish: ClassVar[str]

    def __init__(self, path: str):
        self.dir = path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dir!r})"

    def path(self, *names: str) -> str:
        return FileSystems.join(self.dir, *names)

    @property
    def finished(self) -> bool:
        return outputs.is_complete(self.dir)

    @property
    def finished_at(self) -> _dt.datetime | None:
        """When the stage finalized the directory (the UTC time `outputs.finalize` wrote into
        `_SUCCESS`); None when it is unfinished or `_SUCCESS` holds no such time."""
        if not self.finished:
            return None
        try:
            return _dt.datetime.fromisoformat(outputs.read_text(self.path(SUCCESS_FILE)).strip())
        except ValueError:
            return None

    def check_finished(self) -> None:
        """IncompleteOutput unless `_SUCCESS` is there."""
        if not self.finished:
            raise IncompleteOutput(
                f"{self.dir} has no {SUCCESS_FILE}: it is not a finished {self.stage} output; "
                f"{self.to_finish}"
            )

    def check_complete(self):
        """IncompleteOutput unless the directory is finished and holds what the next stage
        reads; returns self."""
        self.check_finished()
        return self

    def _match(self, pattern: str) -> list[str]:
        return sorted(m.path for m in FileSystems.match([self.path(pattern)])[0].metadata_list)

    def _read_json_if_any(self, name: str):
        path = self.path(name)
        return outputs.read_json(path) if FileSystems.exists(path) else None

    def _read_required_json(self, name: str, keys: tuple[str, ...] = ()) -> dict:
        """A JSON file the next stage cannot do without, holding `keys`; else IncompleteOutput."""
        path = self.path(name)
        try:
            content = outputs.read_json(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
            raise IncompleteOutput(f"cannot read {path}: {err}") from err
        missing = [k for k in keys if k not in content]
        if missing:
            raise IncompleteOutput(
                f"{path} lacks {', '.join(missing)}; re-run `textclf {self.stage}`"
            )
        return content


class PreprocessOutput(StageOutput):
    """`textclf preprocess --output_dir`: transform_fn/, the TFRecords, stats.json and
    preprocess_config.json."""

    stage = PREPROCESS_STAGE
    to_finish = "run `textclf preprocess --output_dir` there (again) first"

    def check_complete(self) -> PreprocessOutput:
        """Finished, with a config holding REQUIRED_CONFIG_KEYS (and tfidf_dim when it lists
        the tfidf features) and stats.json's rows per split."""
        self.check_finished()
        self.config  # noqa: B018 - read for its checks
        self.stats  # noqa: B018
        if FEATURE_TFIDF in self.features and self.tfidf_dim is None:
            raise IncompleteOutput(
                f"{self.path(CONFIG_FILE)} lists the tfidf features but no tfidf_dim; "
                f"re-run `textclf {self.stage}`"
            )
        return self

    @functools.cached_property
    def config(self) -> dict:
        """preprocess_config.json: the preprocess settings and the sizes training builds on."""
        return self._read_required_json(CONFIG_FILE, REQUIRED_CONFIG_KEYS)

    @functools.cached_property
    def stats(self) -> dict:
        """stats.json: rows read, written per split and dead-lettered, labels, lengths."""
        return self._read_required_json(STATS_FILE, ("rows_written",))

    def rows(self, split: str) -> int:
        """The rows written to `split`'s TFRecords (stats.json; finalize checked them against
        the files)."""
        return int(self.stats["rows_written"].get(split, 0))

    def split_pattern(self, split: str) -> str:
        """The file pattern of `split`'s gzipped TFRecord shards."""
        return self.path(f"{split}-*{TFRECORD_SUFFIX}")

    @functools.cached_property
    def tft_output(self):
        """The transform graph and its assets, as tf.Transform reads them (tft.TFTransformOutput;
        TensorFlow is imported on first use)."""
        import tensorflow_transform as tft

        return tft.TFTransformOutput(self.dir)

    @property
    def multi_label(self) -> bool:
        return bool(self.config["multi_label"])

    @property
    def sequence_length(self) -> int:
        return int(self.config["sequence_length"])

    @property
    def id_vocabulary_size(self) -> int:
        """1 (padding) + the vocabulary + the OOV buckets: the embedding's input size."""
        return int(self.config["id_vocabulary_size"])

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @property
    def label_vocabulary(self) -> list[str]:
        """The class names in label-id order."""
        return [str(name) for name in self.config["label_vocabulary"]]

    @property
    def features(self) -> tuple[str, ...]:
        """The feature sets in the TFRecords (`--features`): ("sequence",) or ("sequence",
        "tfidf"); an output written before the flag existed holds the sequence alone."""
        return tuple(self.config.get("features", (FEATURE_SEQUENCE,)))

    @property
    def tfidf_dim(self) -> int | None:
        """With tfidf: the ids of `tfidf_ids` are in [0, tfidf_dim) (the n-gram vocabulary, then
        one OOV id at tfidf_dim - 1), a fixed size whatever the vocabulary's; else None."""
        dim = self.config.get("tfidf_dim") if FEATURE_TFIDF in self.features else None
        return None if dim is None else int(dim)

    @property
    def ngram_max(self) -> int | None:
        """With tfidf: the longest n-gram in the TF-IDF features, in tokens; else None."""
        n = self.config.get("ngram_max") if FEATURE_TFIDF in self.features else None
        return None if n is None else int(n)


class ModelOutput(StageOutput):
    """`textclf train --model_dir`: saved_model/, labels.txt, model_card.json, metrics.json,
    history.json and the PNGs."""

    stage = TRAIN_STAGE
    to_finish = (
        "train one there with `textclf train --model_dir`, or pass the directory of a finished one"
    )

    def check_complete(self) -> ModelOutput:
        """Finished, with saved_model/ and labels.txt naming at least one class: what scoring
        needs (a model exported without model_card.json is still scored)."""
        self.check_finished()
        if not FileSystems.exists(self.saved_model_dir):
            raise IncompleteOutput(
                f"model directory {self.dir} has no {SAVED_MODEL_DIR}; re-export the model"
            )
        if not FileSystems.exists(self.path(LABELS_TXT)):
            raise IncompleteOutput(
                f"model directory {self.dir} has no {LABELS_TXT}; re-export the model"
            )
        if not self.labels:
            raise IncompleteOutput(f"{self.path(LABELS_TXT)} lists no classes")
        return self

    @functools.cached_property
    def card(self) -> dict:
        """model_card.json; {} for a model exported without one."""
        return self._read_json_if_any(MODEL_CARD_FILE) or {}

    @functools.cached_property
    def labels(self) -> list[str]:
        """labels.txt: the class names in the order of the model's outputs."""
        return [line for line in outputs.read_text(self.path(LABELS_TXT)).splitlines() if line]

    @functools.cached_property
    def metrics(self) -> dict | None:
        """metrics.json (the eval split's metrics); None when there is none."""
        return self._read_json_if_any(METRICS_FILE)

    @functools.cached_property
    def history(self) -> dict | None:
        """history.json ({metric: [per epoch]}); None when there is none."""
        return self._read_json_if_any(HISTORY_FILE)

    @property
    def saved_model_dir(self) -> str:
        """saved_model/ (a train output), or the directory itself (a registry version)."""
        from transforms.scoring import saved_model_path

        return saved_model_path(self.dir)

    @functools.cached_property
    def scoring_model(self):
        """The model as the scorer uses it (`transforms.scoring.ScoringModel`): what
        labels.txt and model_card.json say, read the way the scorer reads them."""
        from transforms.scoring import ScoringModel

        return ScoringModel.from_model_dir(self.dir)

    @property
    def model_version(self) -> str:
        """The card's model_version (the scorer writes it on every row); else the dir's name."""
        return self.scoring_model.model_version

    @property
    def multi_label(self) -> bool:
        return self.scoring_model.multi_label

    @property
    def threshold(self) -> float | None:
        """The multi-label decision threshold the model was exported with; None single-label."""
        return self.scoring_model.threshold


class ScoreOutput(StageOutput):
    """`textclf score --output`: part-*.parquet, dead_letter-*.parquet and stats.json."""

    stage = SCORE_STAGE
    to_finish = "run `textclf score --output` there (again) first"

    def check_complete(self) -> ScoreOutput:
        """Finished, with a readable stats.json."""
        self.check_finished()
        self.stats  # noqa: B018 - read for its check
        return self

    @functools.cached_property
    def stats(self) -> dict:
        """stats.json: rows read, scored and dead-lettered (with reasons), label counts."""
        return self._read_required_json(STATS_FILE)

    def part_files(self) -> list[str]:
        """The scored Parquet files, in shard order."""
        return self._match(f"{SCORED_PART_PREFIX}-*{PARQUET_SUFFIX}")

    def dead_letter_files(self) -> list[str]:
        """The dead-letter Parquet files (rows with the reason they were not scored)."""
        return self._match(f"{DEAD_LETTER_PREFIX}-*{PARQUET_SUFFIX}")
