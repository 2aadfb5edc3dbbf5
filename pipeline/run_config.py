"""The `textclf run` config: a TOML file -> `RunConfig` -> each stage's command line.

This module owns reading and checking the config (`[inputs]`, `[preprocess]`, `[train]`,
`[score]`, `[beam]`) and turning it into each stage's argv under a run directory. A stage section
is mapped to flags by the stage's own parser (`stage_parser`: the stage module's `build_parser()`)
through `pipeline.options.flags_from_mapping`, then parsed by that parser before anything runs,
so the config and the CLI cannot drift and a bad setting is a `ConfigError` that names it.
`[beam]` goes to the Beam stages (preprocess, score) only. It runs no stage and writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import os
import tomllib

from apache_beam.io.filesystems import FileSystems

from pipeline.options import flags_from_mapping, parser_flags, unknown_beam_flags
from transforms.contracts import (
    PREPROCESS_STAGE,
    SCORE_STAGE,
    STAGE_DIRS,
    STAGES,
    TRAIN_STAGE,
)

STAGE_MODULES = {
    PREPROCESS_STAGE: "pipeline.preprocess",
    TRAIN_STAGE: "pipeline.train",
    SCORE_STAGE: "pipeline.score",
}
# Flags the run sets itself (from [inputs] and the run directory); a stage section may not.
RESERVED_FLAGS = {
    PREPROCESS_STAGE: {"input", "output_dir", "text_column", "label_column", "id_column"},
    TRAIN_STAGE: {"data_dir", "model_dir"},
    SCORE_STAGE: {"model_dir", "input", "output", "text_column", "id_column"},
}
BEAM_STAGES = (PREPROCESS_STAGE, SCORE_STAGE)
SECTIONS = ("inputs", *STAGES, "beam")
INPUT_KEYS = ("train", "score", "text_column", "label_column", "id_column")


class ConfigError(ValueError):
    """A config the user has to fix before anything runs (exit EXIT_BAD_INPUT)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    path: str
    raw: dict
    train_inputs: tuple[str, ...]
    score_inputs: tuple[str, ...]
    text_column: str
    label_column: str
    id_column: str | None
    settings: dict  # stage -> {flag: value}
    beam: dict


def _patterns(value, key: str, base: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"[inputs] {key} must be a file pattern or a list of them")
    # Relative patterns are relative to the config file, so a cron job's cwd does not matter.
    return tuple(
        v if "://" in v or os.path.isabs(v) else os.path.normpath(os.path.join(base, v))
        for v in values
    )


def load_config(path: str) -> RunConfig:
    """Parse and check the TOML config; raises ConfigError saying what to fix."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(unknown)}; sections are: {', '.join(SECTIONS)}"
        )
    for section in SECTIONS:
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"{path}: [{section}] must be a table of settings")
    inputs = raw.get("inputs", {})
    extra = sorted(set(inputs) - set(INPUT_KEYS))
    if extra:
        raise ConfigError(
            f"{path}: unknown [inputs] key(s) {', '.join(extra)}; keys are: "
            f"{', '.join(sorted(INPUT_KEYS))}"
        )
    for key in ("train", "score"):
        if key not in inputs:
            raise ConfigError(f"{path}: [inputs] needs `{key}` (file pattern(s) to {key} on)")
    base = os.path.dirname(os.path.abspath(path))
    return RunConfig(
        path=os.path.abspath(path),
        raw=raw,
        train_inputs=_patterns(inputs["train"], "train", base),
        score_inputs=_patterns(inputs["score"], "score", base),
        text_column=str(inputs.get("text_column", "text")),
        label_column=str(inputs.get("label_column", "label")),
        id_column=inputs.get("id_column"),
        settings={stage: dict(raw.get(stage, {})) for stage in STAGES},
        beam=dict(raw.get("beam", {})),
    )


def stage_parser(stage: str) -> argparse.ArgumentParser:
    """The stage's own argument parser (its module's `build_parser()`): the one source of its
    flags, for the run and the Flex Template launcher alike."""
    return importlib.import_module(STAGE_MODULES[stage]).build_parser()


def stage_dirs(run_dir: str) -> dict[str, str]:
    """Each stage's output directory in the run directory."""
    return {stage: FileSystems.join(run_dir, name) for stage, name in STAGE_DIRS.items()}


def _run_flags(config: RunConfig, dirs: dict[str, str]) -> dict[str, list[str]]:
    """The flags the run sets itself (RESERVED_FLAGS), per stage."""
    ids = ["--id_column", config.id_column] if config.id_column else []
    return {
        PREPROCESS_STAGE: [
            "--input",
            *config.train_inputs,
            "--output_dir",
            dirs[PREPROCESS_STAGE],
            "--text_column",
            config.text_column,
            "--label_column",
            config.label_column,
            *ids,
        ],
        TRAIN_STAGE: ["--data_dir", dirs[PREPROCESS_STAGE], "--model_dir", dirs[TRAIN_STAGE]],
        SCORE_STAGE: [
            "--model_dir",
            dirs[TRAIN_STAGE],
            "--input",
            *config.score_inputs,
            "--output",
            dirs[SCORE_STAGE],
            "--text_column",
            config.text_column,
            *ids,
        ],
    }


def _check_keys(stage: str, section: dict, flags: dict, beam: dict) -> None:
    for key in section:
        if key in RESERVED_FLAGS[stage]:
            raise ConfigError(
                f"[{stage}] {key} is set by `textclf run` (from [inputs] and the "
                "run directory); remove it from the config"
            )
        if key not in flags:
            known = sorted(set(flags) - RESERVED_FLAGS[stage])
            raise ConfigError(
                f"[{stage}] {key} is not a flag of `textclf {stage}`; its flags "
                f"are: {', '.join(known)}"
            )
    if stage in BEAM_STAGES:
        for key in beam:
            if key in flags:
                raise ConfigError(
                    f"[beam] {key} is a flag of `textclf {stage}`, not a Beam option; "
                    f"set it in [{stage}]"
                )


def stage_argvs(config: RunConfig, run_dir: str) -> dict[str, list[str]]:
    """Each stage's full command line; checked with the stage's parser before anything runs."""
    run_flags = _run_flags(config, stage_dirs(run_dir))
    argvs = {}
    for stage in STAGES:
        parser = stage_parser(stage)
        section = config.settings[stage]
        _check_keys(stage, section, parser_flags(parser), config.beam)
        try:
            own = run_flags[stage] + flags_from_mapping(parser, section)
        except ValueError as err:
            raise ConfigError(f"[{stage}] {err}") from None
        error = io.StringIO()
        try:
            with contextlib.redirect_stderr(error):
                _, rest = parser.parse_known_args(own)
        except SystemExit:
            reason = error.getvalue().strip().splitlines()[-1:] or ["invalid settings"]
            raise ConfigError(f"[{stage}] {reason[0].split(': error: ', 1)[-1]}") from None
        if rest:
            raise ConfigError(f"[{stage}] not understood: {' '.join(rest)}")
        beam = flags_from_mapping(parser, config.beam) if stage in BEAM_STAGES else []
        argvs[stage] = (own, beam)
    for _, beam in argvs.values():  # after every stage's own check: that message is clearer
        unknown = unknown_beam_flags(beam)
        if unknown:
            raise ConfigError(f"[beam] not a Beam option: {' '.join(unknown)}")
    return {stage: own + beam for stage, (own, beam) in argvs.items()}
