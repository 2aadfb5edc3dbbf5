"""`textclf datasets prepare NAME --output DIR`: flags and exit codes around pipeline.datasets."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline import datasets


def build_parser() -> argparse.ArgumentParser:
    """The command's flags, as every subcommand's: `textclf datasets prepare|list`."""
    parser = argparse.ArgumentParser(
        prog="textclf datasets", description="The embedded real corpora, as Parquet."
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    prep = sub.add_parser("prepare", help="write <output>/{train,test}.parquet (text, label)")
    prep.add_argument(
        "name", choices=datasets.DATASETS, help="the dataset, one of %(choices)s; required"
    )
    prep.add_argument("--output", required=True, help="directory for the Parquet files; required")
    sub.add_parser("list", help="list the embedded datasets")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "list":
        print("\n".join(datasets.DATASETS))
        return 0
    try:
        written = datasets.prepare(args.name, args.output)
    except datasets.DatasetError as err:
        print(f"textclf datasets: {err}", file=sys.stderr)
        return 2
    print(json.dumps(written, indent=2))
    return 0
