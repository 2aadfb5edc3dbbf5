"""The score stage's Beam graph: `ScoreParquet`, Parquet files in, scored Parquet part files out.

`ScoreParquet(ScoreSettings)` reads the input patterns as Arrow tables (only the needed columns),
scores them with `scoring.ScoreRecordBatches`, writes the scored rows and the dead letters as
Parquet part files under `output_dir`, and summarizes the tables read, scored and dead-lettered
and the scored rows' input profile (token lengths, OOV tokens: the drift check's figures).
It returns those write results and summaries: the side inputs of the job's last step, which
checks the counts against the files, numbers the shards, writes stats.json and publishes the
directory; that step (`pipeline/score.py`) is policy and lives there.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.contracts import (
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_TAG,
    PARQUET_SUFFIX,
    REASON_COLUMN,
    SCORED_PART_PREFIX,
)
from transforms.scoring import (
    DEFAULT_BATCH_SIZE,
    PROFILE_TAG,
    ScoreRecordBatches,
    ScoringModel,
    SummarizeTables,
    dead_letter_schema,
    scored_schema,
)
from transforms.tfrecords import merge_stats

# Keys of what `ScoreParquet` returns: three table summaries ({"rows", "counts"}, one element
# each), the summed input profile (PROFILE, one element: {} for a model without the profile
# outputs) and the file names of each write (WRITTEN_PREFIX + a number).
READ, SCORED, DEAD_LETTERED, PROFILE = "read", "scored", "dead_lettered", PROFILE_TAG
WRITTEN_PREFIX = "written_"


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    """What `ScoreParquet` needs: the inputs, the model, the columns and where to write.

    `inputs` are Parquet file patterns (each read once); `output_dir` is where the part files go
    (the stage's staging directory); `passthrough` is the schema of the columns copied to both
    outputs; `threshold` overrides a multi-label model's own threshold (None: keep it).
    """

    inputs: tuple[str, ...]
    output_dir: str
    model: ScoringModel
    text_column: str
    passthrough: pa.Schema
    batch_size: int = DEFAULT_BATCH_SIZE
    threshold: float | None = None


class ScoreParquet(beam.PTransform):
    """PBegin -> {name: PCollection}: the score stage up to, not including, its last step.

    Returns `read`, `scored`, `dead_lettered` (one `SummarizeTables` summary each: rows, and
    the predicted labels or dead-letter reasons counted), `profile` (the scored rows' input
    profiles summed: {"rows", "length_counts", "window_tokens", "oov_tokens"}, or {}) and
    `written_0` (scored part files),
    `written_1` (dead-letter part files), named `<prefix>-SSSSS-of-NNNNN.parquet` by Beam's sink.
    """

    def __init__(self, settings: ScoreSettings):
        super().__init__()
        self._settings = settings

    def expand(self, pbegin):
        s = self._settings
        read_columns = list(dict.fromkeys([*s.passthrough.names, s.text_column]))
        tables = [
            pbegin
            | f"ReadParquet[{i}]"
            >> beam.io.ReadFromParquetBatched(pattern, columns=read_columns).with_output_types(
                pa.Table
            )
            for i, pattern in enumerate(s.inputs)
        ] | "FlattenInputs" >> beam.Flatten().with_output_types(pa.Table)
        results = tables | "Score" >> ScoreRecordBatches(
            s.model, s.text_column, s.passthrough, s.batch_size, s.threshold
        )
        scored, dead = results["scored"], results[DEAD_LETTER_TAG]
        return {
            f"{WRITTEN_PREFIX}0": scored
            | "WriteScored"
            >> self._write(SCORED_PART_PREFIX, scored_schema(s.passthrough, s.model)),
            f"{WRITTEN_PREFIX}1": dead
            | "WriteDeadLetter"
            >> self._write(DEAD_LETTER_PREFIX, dead_letter_schema(s.passthrough)),
            READ: tables | "CountRead" >> beam.CombineGlobally(SummarizeTables()),
            SCORED: scored
            | "CountScored" >> beam.CombineGlobally(SummarizeTables(s.model.prediction_column())),
            DEAD_LETTERED: dead
            | "CountDeadLetter" >> beam.CombineGlobally(SummarizeTables(REASON_COLUMN)),
            PROFILE: results[PROFILE_TAG] | "SumProfile" >> beam.CombineGlobally(merge_stats),
        }

    def _write(self, prefix: str, schema: pa.Schema) -> beam.PTransform:
        """Tables -> snappy Parquet part files `<output_dir>/<prefix>-*.parquet`."""
        return beam.io.WriteToParquetBatched(
            FileSystems.join(self._settings.output_dir, prefix),
            schema,
            codec="snappy",
            file_name_suffix=PARQUET_SUFFIX,
        )
