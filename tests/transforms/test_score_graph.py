"""`ScoreParquet` on real Parquet files and a real (tiny) SavedModel, with Beam's TestPipeline."""

from __future__ import annotations

import glob
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.model_fixtures import build_test_model
from transforms.contracts import (
    DEAD_LETTER_PREFIX,
    PARQUET_SUFFIX,
    PREDICTED_LABEL_COLUMN,
    REASON_COLUMN,
    REASON_TEXT_EMPTY,
    REASON_TEXT_NULL,
    SCORED_PART_PREFIX,
)
from transforms.score_graph import (
    DEAD_LETTERED,
    PROFILE,
    READ,
    SCORED,
    WRITTEN_PREFIX,
    ScoreParquet,
    ScoreSettings,
)
from transforms.scoring import ScoringModel

TRAIN_TEXTS = ["good great fun", "bad awful boring", "great movie", "boring bad film"] * 8
TRAIN_LABELS = ["pos", "neg", "pos", "neg"] * 8


def all_named(prefix: str):
    """A Beam matcher: at least one file, each named `<prefix>-...parquet`."""

    def check(paths):
        names = [os.path.basename(path) for path in paths]
        assert names and all(
            n.startswith(f"{prefix}-") and n.endswith(PARQUET_SUFFIX) for n in names
        ), names

    return check


def test_score_parquet_scores_every_usable_row_once_and_summarizes_what_it_wrote(tmp_path):
    model_dir = str(tmp_path / "model")
    build_test_model(model_dir, TRAIN_TEXTS, TRAIN_LABELS)
    model = ScoringModel.from_model_dir(model_dir)
    # Two files under two patterns; 3 of the 12 rows have unusable text. `extra` is not passed
    # through, so it must not reach the outputs.
    texts = ["good fun", None, "bad film", "  ", "great", "boring", "fun", "awful", "", "movie"]
    pq.write_table(
        pa.table({"id": list(range(8)), "body": texts[:8], "extra": [1.0] * 8}),
        tmp_path / "a.parquet",
        row_group_size=3,
    )
    pq.write_table(
        pa.table({"id": [8, 9, 10, 11], "body": [*texts[8:], "plot", "scene"], "extra": [2.0] * 4}),
        tmp_path / "b.parquet",
    )
    out = str(tmp_path / "out")
    settings = ScoreSettings(
        inputs=(str(tmp_path / "a.parquet"), str(tmp_path / "b*.parquet")),
        output_dir=out,
        model=model,
        text_column="body",
        passthrough=pa.schema([("id", pa.int64())]),
        batch_size=4,
    )

    with TestPipeline(runner=FnApiRunner()) as p:
        results = p | ScoreParquet(settings)
        assert sorted(results) == sorted(
            [READ, SCORED, DEAD_LETTERED, PROFILE, f"{WRITTEN_PREFIX}0", f"{WRITTEN_PREFIX}1"]
        )
        # The fixture model's signature has no profile outputs: nothing to sum.
        assert_that(results[PROFILE], equal_to([{}]), label="CheckProfile")
        assert_that(results[READ], equal_to([{"rows": 12, "counts": {}}]), label="CheckRead")
        assert_that(
            results[SCORED] | beam.Map(lambda s: (s["rows"], sum(s["counts"].values()))),
            equal_to([(9, 9)]),  # one predicted label per scored row
            label="CheckScored",
        )
        assert_that(
            results[DEAD_LETTERED],
            equal_to([{"rows": 3, "counts": {REASON_TEXT_NULL: 1, REASON_TEXT_EMPTY: 2}}]),
            label="CheckDeadLettered",
        )
        assert_that(
            results[f"{WRITTEN_PREFIX}0"],
            all_named(SCORED_PART_PREFIX),
            label="CheckScoredFiles",
        )
        assert_that(
            results[f"{WRITTEN_PREFIX}1"],
            all_named(DEAD_LETTER_PREFIX),
            label="CheckDeadLetterFiles",
        )

    scored = pa.concat_tables(
        pq.read_table(path) for path in glob.glob(f"{out}/{SCORED_PART_PREFIX}-*{PARQUET_SUFFIX}")
    )
    dead = pa.concat_tables(
        pq.read_table(path) for path in glob.glob(f"{out}/{DEAD_LETTER_PREFIX}-*{PARQUET_SUFFIX}")
    )
    assert sorted(scored.column("id").to_pylist()) == [0, 2, 4, 5, 6, 7, 9, 10, 11]
    assert sorted(dead.column("id").to_pylist()) == [1, 3, 8]
    assert "extra" not in scored.column_names and "body" not in scored.column_names
    assert set(scored.column(PREDICTED_LABEL_COLUMN).to_pylist()) <= {"pos", "neg"}
    assert dead.column_names == ["id", REASON_COLUMN]
