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

Run as a script it is the one image's launcher (templates/Dockerfile sets it as
FLEX_TEMPLATE_PYTHON_PY_FILE for both templates): the stage is the one whose required flags the
parameters name (each template's metadata.json makes exactly those non-optional), and a template
launch that names no `sdk_container_image` gets the image's own name ($TEXTCLF_IMAGE), so the
workers run the image the launcher ran in.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Collection, Sequence

from pipeline.options import flags_from_mapping, parser_flags
from pipeline.run_config import STAGE_MODULES, stage_parser
from transforms.contracts import EXIT_BAD_INPUT, PREPROCESS_STAGE, SCORE_STAGE

STAGES = (PREPROCESS_STAGE, SCORE_STAGE)  # the Beam stages, one Flex Template each
IMAGE_ENV = "TEXTCLF_IMAGE"  # the image's own name, set at build time (templates/Dockerfile)
# Beam's option naming the worker image, and its older alias.
SDK_IMAGE_OPTIONS = ("sdk_container_image", "worker_harness_container_image")
# The Flex Template launcher passes it (Beam then writes the job graph there): a template launch.
TEMPLATE_LOCATION = "template_location"


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


def required_parameters(stage: str) -> set[str]:
    """The flags the stage cannot run without (its metadata.json's non-optional parameters)."""
    return {name for name, action in parser_flags(stage_parser(stage)).items() if action.required}


def template_stage(names: Collection[str]) -> str:
    """The stage a launch of the one template image runs: the stage whose required flags are all
    among the parameter `names`. Dataflow refuses a template's launch without its metadata's
    non-optional parameters, and no stage's required flags lie within another's
    (tests/test_templates.py), so a template always launches its own stage."""
    stages = [stage for stage in STAGES if required_parameters(stage) <= set(names)]
    if len(stages) != 1:
        wanted = "; ".join(f"{s}: {', '.join(sorted(required_parameters(s)))}" for s in STAGES)
        found = "both stages" if stages else "neither stage"
        raise ValueError(f"the parameters name the required flags of {found} ({wanted})")
    return stages[0]


def main(argv: Sequence[str] | None = None, image: str | None = None) -> int:
    """The image's launcher script: pick the stage from the parameters, default the worker image
    to this image on a template launch, run the stage. Returns its exit code (2: bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    image = os.environ.get(IMAGE_ENV, "") if image is None else image
    mapping, _ = template_mapping(argv)
    try:
        stage = template_stage(mapping)
    except ValueError as err:
        print(f"textclf (template): {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if TEMPLATE_LOCATION in mapping and not any(o in mapping for o in SDK_IMAGE_OPTIONS):
        if not image:
            print(
                f"textclf {stage} (template): no worker image: pass the parameter "
                f"sdk_container_image=<this template's image>, or build the image with "
                f"--build-arg {IMAGE_ENV}=<its own name> (templates/README.md)",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        argv.append(f"--sdk_container_image={image}")
    return launch(stage, argv)


if __name__ == "__main__":
    sys.exit(main())
