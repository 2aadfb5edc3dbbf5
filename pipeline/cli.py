"""The `textclf` command: one subcommand per stage, plus datasets, describe, promote, evaluate,
run and demo.

Each stage module exposes `build_parser()` (its own flags: the CLI, `textclf run`, the Flex
Template check and the tests read them there), `parse(argv)` and `main(argv) -> int`; a Beam
stage's flags it does not declare go to Beam's PipelineOptions, and one neither declares exits 2
(pipeline/options.py). This module only dispatches.

Failures are reported in one place, here. A module's `main` catches only its own bad-input
exceptions (one line on stderr, returns EXIT_BAD_INPUT = 2) and lets anything else propagate;
`main` below prints the full traceback on stderr for those, then one last line
`textclf <command>: failed: <Type>: <message>` (what `textclf run` quotes as the reason), and
exits 1. So a person always gets either a sentence saying what to fix, or the traceback. Bad
flags are refused earlier, by the module's parser itself: argparse's way, SystemExit(2).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

# name -> (module, one-line help). Modules are imported only when their subcommand runs, so
# `textclf --help` does not pay for importing TensorFlow.
SUBCOMMANDS = {
    "datasets": ("pipeline.datasets_cli", "fetch the embedded corpora and write them as Parquet"),
    "preprocess": ("pipeline.preprocess", "Beam + tf.Transform: corpus -> padded TFRecords"),
    "train": ("pipeline.train", "Keras: TFRecords -> raw-text SavedModel"),
    "describe": ("pipeline.describe", "print the model's layers, shapes, head and loss"),
    "score": ("pipeline.score", "Beam: Parquet + SavedModel -> scored Parquet"),
    "promote": ("pipeline.promote", "gate a trained model against the registry's champion"),
    "evaluate": ("pipeline.evaluate", "a model's accuracy and macro-F1 on labelled files"),
    "run": ("pipeline.run", "preprocess -> train -> score under one run directory"),
    "demo": ("pipeline.demo", "the whole chain on the embedded 20 Newsgroups data"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textclf",
        description="Batch text classification with Apache Beam, tf.Transform and Keras.",
        epilog="Beam pipeline flags (--runner, --direct_num_workers, --temp_location, ...) are "
        "passed through to PipelineOptions by the stages that run Beam; a flag that neither the "
        "command nor Beam declares is refused (exit 2). Environment: TEXTCLF_PROGRESS_SECONDS, "
        "the seconds between the progress lines that preprocess and score log while they read "
        "(default 30; 0: none); TEXTCLF_CACHE, where `datasets` caches the corpora (default "
        "~/.cache/textclf).",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=version_text(),
        help="print textclf's version and those of the packages it runs on, then exit",
    )
    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        help="one of these; `textclf COMMAND --help` lists its flags",
    )
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def version_text() -> str:
    """`textclf <version>`, then the versions of Python and the packages that decide a stage's
    output (pipeline/versions.py: the list the model card and the run manifest record)."""
    from pipeline.versions import package_versions

    versions = package_versions()
    own = versions.pop("textclf") or "(not installed: run `pip install -e .`)"
    others = ", ".join(f"{name} {version}" for name, version in versions.items() if version)
    return f"textclf {own}\n{others}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:
        print(version_text())
        return 0
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(
                f"textclf: unknown command '{argv[0]}'; choose one of: {', '.join(SUBCOMMANDS)}",
                file=sys.stderr,
            )
            return 2
        parser.print_help()
        return 0
    from transforms.progress import progress_seconds

    try:  # a bad setting is refused before any work, as a bad flag is
        progress_seconds()
    except ValueError as err:
        print(f"textclf {argv[0]}: {err}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    except Exception as err:  # noqa: BLE001 - unexpected: the traceback, then one summary line
        return report_failure(argv[0], err)


def report_failure(command: str, err: BaseException) -> int:
    """Print `err`'s traceback and a last one-line summary on stderr; return exit code 1."""
    sys.stdout.flush()
    traceback.print_exception(err, file=sys.stderr)
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    if len(first) > 500:
        first = first[:500] + " ..."
    print(f"textclf {command}: failed: {type(err).__name__}: {first}", file=sys.stderr)
    sys.stderr.flush()
    return 1


if __name__ == "__main__":
    sys.exit(main())
