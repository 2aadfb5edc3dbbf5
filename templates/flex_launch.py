"""Flex Template parameters -> a stage's command line, then the stage itself.

The Dataflow Flex Template launcher calls the launcher script with every template parameter as
one `--name=value` string. Two kinds of the stages' flags do not take that form: a repeated flag
(`--input PATTERN...`, argparse `nargs="+"`) and a switch (`--multi_label`, `--lowercase` /
`--no-lowercase`). So a template parameter for a repeated flag is a comma-separated list
(`--input=gs://b/a/*.csv,gs://b/more/*.parquet`) and a switch takes `true` or `false`; this
module rewrites those into the stage's own form, reading which flags they are from the stage's
`PipelineOptions._add_argparse_args`, and passes everything else (Beam's `--runner`,
`--project`, `--temp_location`, ...) through unchanged. It owns that rewrite only; the stages
themselves never see template syntax, so `textclf preprocess` on a laptop and the template on
Dataflow parse the same flags. templates/metadata.json regexes keep commas out of single paths.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# stage -> (module, PipelineOptions subclass with the stage's flags)
STAGES = {
    "preprocess": ("pipeline.preprocess", "PreprocessOptions"),
    "score": ("pipeline.score", "ScoreOptions"),
}
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def stage_parser(options_cls) -> argparse.ArgumentParser:
    """An argparse parser holding exactly the stage's own flags."""
    parser = argparse.ArgumentParser(add_help=False)
    options_cls._add_argparse_args(parser)
    return parser


def _flag_kinds(parser: argparse.ArgumentParser) -> tuple[set, set, set]:
    lists, switches, negatable = set(), set(), set()
    for action in parser._actions:
        for option in action.option_strings:
            if action.nargs in ("+", "*"):
                lists.add(option)
            elif isinstance(action, argparse.BooleanOptionalAction):
                negatable.add(option)
            elif isinstance(action, argparse._StoreTrueAction):
                switches.add(option)
    return lists, switches, negatable


def template_argv(options_cls, argv: Sequence[str]) -> list[str]:
    """Rewrite template-style `--name=value` parameters into the stage's command line."""
    lists, switches, negatable = _flag_kinds(stage_parser(options_cls))
    out: list[str] = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if not eq or not (name in lists or name in switches or name in negatable):
            out.append(arg)
            continue
        if name in lists:
            items = [item.strip() for item in value.split(",") if item.strip()]
            if not items:
                raise ValueError(f"template parameter {name} is empty; give a comma-separated list")
            out.extend([name, *items])
            continue
        flag = value.strip().lower()
        if flag not in TRUE + FALSE:
            raise ValueError(f"template parameter {name}={value}: use true or false")
        if flag in TRUE:
            out.append(name)
        elif name in negatable:
            out.append(f"--no-{name[2:]}")
    return out


def launch(stage: str, argv: Sequence[str]) -> int:
    """Run `stage` with template-style argv; return the stage's exit code (2: bad input)."""
    module_name, class_name = STAGES[stage]
    module = importlib.import_module(module_name)
    try:
        stage_argv = template_argv(getattr(module, class_name), argv)
    except ValueError as err:
        print(f"textclf {stage} (template): {err}", file=sys.stderr)
        return 2
    return module.main(stage_argv)
