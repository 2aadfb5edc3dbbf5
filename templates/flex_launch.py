"""Flex Template parameters -> a stage's command line, then the stage itself.

The Dataflow Flex Template launcher calls the launcher script with every template parameter as
one `--name=value` string. This module reads those into a mapping (`{name: value}`; a name given
twice keeps both values, in order) and turns it into the stage's command line with
`pipeline.options.flags_from_mapping` and the stage's own parser, the mapping `textclf run` applies
to its config. So a repeated flag's parameter is a comma-separated list
(`--input=gs://b/a/*.csv,gs://b/more/*.parquet` -> `--input gs://b/a/*.csv gs://b/more/*.parquet`),
a switch takes `true` or `false` (`--lowercase=false` -> `--no-lowercase`), and Beam's own
options (`--runner`, `--project`, `--temp_location`, ...) keep their `--name=value` form; an
argument that is not `--name=value` passes through as it is. It owns that reading only; the
stages never see template syntax, so `textclf preprocess` on a laptop and the template on
Dataflow parse the same flags. templates/*/metadata.json regexes keep commas out of single paths.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from pipeline.options import flags_from_mapping
from pipeline.run_config import STAGE_MODULES, stage_parser
from transforms.contracts import EXIT_BAD_INPUT, PREPROCESS_STAGE, SCORE_STAGE

STAGES = (PREPROCESS_STAGE, SCORE_STAGE)  # the Beam stages, one Flex Template each


def template_mapping(argv: Sequence[str]) -> tuple[dict[str, str | list[str]], list[str]]:
    """`--name=value` parameters as `{name: value}` (a repeated name: a list of its values), and
    the arguments of any other form, in order."""
    mapping: dict[str, str | list[str]] = {}
    other = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if not (eq and name.startswith("--") and len(name) > 2):
            other.append(arg)
        elif name[2:] in mapping:
            before = mapping[name[2:]]
            mapping[name[2:]] = [*(before if isinstance(before, list) else [before]), value]
        else:
            mapping[name[2:]] = value
    return mapping, other


def template_argv(stage: str, argv: Sequence[str]) -> list[str]:
    """Template-style `--name=value` parameters -> the stage's command line (ValueError, naming
    the parameter, for a value its flag cannot take)."""
    mapping, other = template_mapping(argv)
    return flags_from_mapping(stage_parser(stage), mapping) + other


def launch(stage: str, argv: Sequence[str]) -> int:
    """Run `stage` with template-style argv; return the stage's exit code (2: bad input)."""
    try:
        stage_argv = template_argv(stage, argv)
    except ValueError as err:
        print(f"textclf {stage} (template): parameter {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return importlib.import_module(STAGE_MODULES[stage]).main(stage_argv)
