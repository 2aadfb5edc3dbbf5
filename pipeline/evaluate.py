"""`textclf evaluate`: one model's figures on labelled files, with the code the gate uses.

Reads every valid row of `--input` with the preprocess stage's readers and row checks, scores
the rows in process with the scorer's code and compares the predictions with the rows' labels by
name (pipeline/gate.py): accuracy, macro-F1, rows, and per class (with the confusion matrix for a
single-label model). `--model_dir` is a train output, or a registry root (its champion, or
`--model_version N`). The figures are printed as one line and written to `--output` atomically.
`textclf run` calls it for every model it trained when the scored data has labels, so the report
compares the architectures on the same scored rows. Exit 0, or 2 for bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import gate, outputs
from pipeline.artifacts import IncompleteOutput, ModelOutput
from pipeline.options import BEAM_FLAGS_HELP, parse_beam_stage
from pipeline.registry import RegistryError, resolve_model_dir
from transforms.contracts import EXIT_BAD_INPUT

_LOG = logging.getLogger("textclf.evaluate")


class EvaluateOptions(argparse.Namespace):
    """The command's settings: one attribute per flag of `build_parser()`."""

    model_dir: str
    model_version: int | None
    input: list[str]
    text_column: str
    label_column: str
    label_delimiter: str | None
    format: str
    csv_delimiter: str | None
    output: str | None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textclf evaluate",
        description="Score labelled files with a model in process and compare the predictions "
        "with the labels: accuracy, macro-F1, per class. Exit 0, or 2 for bad input.",
        epilog=BEAM_FLAGS_HELP + " Beam reads the rows.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--model_dir",
        required=True,
        help="a finished `textclf train` output, or a registry root (its champion); required",
    )
    parser.add_argument(
        "--model_version",
        type=int,
        default=None,
        help="with a registry root: this version instead of the champion (default: champion)",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        action="extend",
        required=True,
        metavar="PATTERN",
        help="labelled files (CSV, JSONL, Parquet, read as preprocess reads them); required",
    )
    gate.add_reading_flags(parser)
    parser.add_argument(
        "--output",
        default=None,
        metavar="PATH",
        help="also write the figures as JSON here, atomically (default: print only)",
    )
    return parser


def parse(argv: Sequence[str]) -> tuple[EvaluateOptions, PipelineOptions]:
    return parse_beam_stage(build_parser(), argv, EvaluateOptions())


def evaluate(opts: EvaluateOptions, beam_options: PipelineOptions | None = None) -> dict:
    """The model's figures on the rows (raises gate.GateError, RegistryError, IncompleteOutput,
    CorpusError for bad input; nothing is written then)."""
    model_dir, version = resolve_model_dir(opts.model_dir, opts.model_version)
    model = ModelOutput(model_dir).check_complete()
    rows = gate.rows_from_files(opts.input, opts, model.multi_label, beam_options)
    figures = gate.model_figures(model.dir, rows, detail=True)
    result = {
        "model_dir": outputs.normalized(model.dir),
        "model_version": model.model_version,
        "registry_version": version,
        "architecture": model.card.get("architecture", "seed"),
        "eval": rows.describe(),
        "metrics": figures,
    }
    if opts.output:  # (missing local parent directories are created)
        outputs.write_json_atomic(opts.output, result)
    return result


def main(argv: Sequence[str]) -> int:
    from transforms.corpus_io import CorpusError

    opts, beam_options = parse(argv)
    try:
        result = evaluate(opts, beam_options)
    except (gate.GateError, RegistryError, IncompleteOutput, CorpusError) as err:
        print(f"textclf evaluate: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    m = result["metrics"]
    print(
        f"{result['model_dir']} (model_version {result['model_version']}) on {m['rows']} rows: "
        f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
