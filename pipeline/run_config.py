"""The `textclf run` config: a TOML file -> `RunConfig` -> each stage's command line.

This module owns reading and checking the config (`[inputs]`, `[preprocess]`, `[train]`,
`[score]`, `[beam]`, `[registry]`, `[promotion]`), resolving dated input patterns
(`{run_date}`, `{run_date:%Y/%m/%d}`) for one run date, and turning it into each stage's argv
(and the promotion gate's) under a run directory. A stage section
is mapped to flags by the stage's own parser (`stage_parser`: the stage module's `build_parser()`)
through `pipeline.options.flags_from_mapping`, then parsed by that parser before anything runs,
so the config and the CLI cannot drift and a bad setting is a `ConfigError` that names it.
`[beam]` goes to the Beam stages (preprocess, score) only. It runs no stage and writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import importlib
import io
import os
import string
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
from transforms.corpus_io import CorpusError, format_for

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
SECTIONS = ("inputs", *STAGES, "beam", "registry", "promotion")
INPUT_KEYS = ("train", "score", "text_column", "label_column", "id_column", "allow_missing")
REGISTRY_KEYS = ("root",)
# [promotion]: the gate `textclf promote` applies after training (flags of the same names).
PROMOTION_KEYS = ("metric", "tolerance", "floor", "eval_input")
PROMOTION_DEFAULTS = {"metric": "accuracy", "tolerance": 0.0, "floor": 0.0}
PROMOTION_METRICS = ("accuracy", "macro_f1")
DATE_FIELD = "run_date"  # the one placeholder an input pattern may hold


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
    allow_missing: bool = False  # a date with no input files is recorded as skipped, not an error
    registry_root: str | None = None  # [registry] root: models are gated and published there
    promotion: dict = dataclasses.field(default_factory=lambda: dict(PROMOTION_DEFAULTS))
    eval_inputs: tuple[str, ...] = ()  # [promotion] eval_input: a fixed evaluation set
    # [train] architecture as a list: the first trains into model/ (gated, scores), the others
    # into model-<name>/ to be compared with it; () when the config does not list any.
    architectures: tuple[str, ...] = ()

    @property
    def dated(self) -> bool:
        """Whether any input pattern depends on the run date."""
        return any(_fields(p) for p in (*self.train_inputs, *self.score_inputs, *self.eval_inputs))

    def for_date(self, run_date: str) -> RunConfig:
        """This config with `{run_date...}` in the input patterns resolved for `run_date`."""
        date = _dt.date.fromisoformat(run_date)

        def resolve(patterns: tuple[str, ...]) -> tuple[str, ...]:
            # Every pattern is formatted: `{{` is a literal brace in all of them.
            return tuple(p.format(run_date=date) for p in patterns)

        return dataclasses.replace(
            self,
            train_inputs=resolve(self.train_inputs),
            score_inputs=resolve(self.score_inputs),
            eval_inputs=resolve(self.eval_inputs),
        )


def _fields(pattern: str) -> list[str]:
    """The `{...}` field names in a pattern (str.format syntax; `{{` is a literal brace)."""
    return [field for _, field, _, _ in string.Formatter().parse(pattern) if field is not None]


def _check_placeholders(pattern: str, key: str) -> None:
    """A pattern may hold `{run_date}` or `{run_date:<strftime format>}` and nothing else."""
    try:
        fields = _fields(pattern)
        if any(f != DATE_FIELD for f in fields):
            raise ValueError(
                f"unknown placeholder {{{next(f for f in fields if f != DATE_FIELD)}}}"
            )
        pattern.format(run_date=_dt.date(2024, 3, 1))
    except (ValueError, IndexError, KeyError) as err:
        raise ConfigError(
            f"{key} pattern {pattern!r}: {err}; the only placeholder is {{run_date}} or "
            "{run_date:%Y/%m/%d} (strftime codes); write a literal brace as {{ or }}"
        ) from None


def _patterns(value, key: str, base: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{key} must be a file pattern or a list of them")
    for v in values:
        _check_placeholders(v, key)
    # Relative patterns are relative to the config file, so a cron job's cwd does not matter.
    return tuple(_local_or_url(v, base) for v in values)


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
    if not isinstance(inputs.get("allow_missing", False), bool):
        raise ConfigError(f"{path}: [inputs] allow_missing must be true or false")
    base = os.path.dirname(os.path.abspath(path))
    registry_root, promotion, eval_inputs = _registry(path, raw, base)
    architectures = _architectures(path, raw.get(TRAIN_STAGE, {}))
    features = raw.get(PREPROCESS_STAGE, {}).get("features", "sequence")
    features = features if isinstance(features, list) else str(features).split(",")
    if "tfidf_linear" in architectures and "tfidf" not in [f.strip() for f in features]:
        raise ConfigError(
            f"{path}: [train] architecture tfidf_linear reads TF-IDF features; set [preprocess] "
            'features = "sequence,tfidf"'
        )
    if "model_version" in raw.get("score", {}) and registry_root is None:
        raise ConfigError(
            f"{path}: [score] model_version pins a registry version and needs [registry] root"
        )
    return RunConfig(
        path=os.path.abspath(path),
        raw=raw,
        train_inputs=_patterns(inputs["train"], "[inputs] train", base),
        score_inputs=_patterns(inputs["score"], "[inputs] score", base),
        text_column=str(inputs.get("text_column", "text")),
        label_column=str(inputs.get("label_column", "label")),
        id_column=inputs.get("id_column"),
        settings={stage: dict(raw.get(stage, {})) for stage in STAGES},
        architectures=architectures,
        beam=dict(raw.get("beam", {})),
        allow_missing=inputs.get("allow_missing", False),
        registry_root=registry_root,
        promotion=promotion,
        eval_inputs=eval_inputs,
    )


def _architectures(path: str, train: dict) -> tuple[str, ...]:
    """[train] architecture as a tuple (a string is a one-item list); per-architecture tables
    `[train.<name>]` must name a listed architecture."""
    value = train.get("architecture")
    names = () if value is None else (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ConfigError(
            f"{path}: [train] architecture must be a name or a list of distinct names"
        )
    for key, table in train.items():
        if isinstance(table, dict) and key not in names:
            raise ConfigError(
                f"{path}: [train.{key}] sets flags for architecture {key!r}, which [train] "
                f"architecture does not list ({', '.join(names) or 'none'})"
            )
    return names


def train_section(config: RunConfig, architecture: str | None) -> dict:
    """[train]'s flags for one architecture: the shared keys, `architecture`, then the keys of
    `[train.<architecture>]` over them."""
    section = {k: v for k, v in config.settings[TRAIN_STAGE].items() if not isinstance(v, dict)}
    section.pop("architecture", None)
    if architecture is not None:
        section["architecture"] = architecture
        section.update(config.settings[TRAIN_STAGE].get(architecture) or {})
    return section


def challenger_dir(run_dir: str, architecture: str) -> str:
    """Where an architecture other than the first trains: <run_dir>/model-<architecture>."""
    return FileSystems.join(run_dir, f"{STAGE_DIRS[TRAIN_STAGE]}-{architecture}")


def challenger_argvs(config: RunConfig, run_dir: str) -> dict[str, list[str]]:
    """`textclf train`'s command line for each architecture after the first, into its own dir."""
    dirs = stage_dirs(run_dir)
    argvs = {}
    for name in config.architectures[1:]:
        parser = stage_parser(TRAIN_STAGE)
        section = train_section(config, name)
        fixed = ["--data_dir", dirs[PREPROCESS_STAGE], "--model_dir", challenger_dir(run_dir, name)]
        argvs[name] = _checked(TRAIN_STAGE, parser, fixed, section, config.beam, f"train.{name}")
    return argvs


def _local_or_url(value: str, base: str) -> str:
    return (
        value
        if "://" in value or os.path.isabs(value)
        else os.path.normpath(os.path.join(base, value))
    )


def _registry(path: str, raw: dict, base: str) -> tuple[str | None, dict, tuple[str, ...]]:
    """[registry] root and [promotion] settings, checked."""
    registry, promotion = raw.get("registry", {}), raw.get("promotion", {})
    for section, table, keys in (
        ("registry", registry, REGISTRY_KEYS),
        ("promotion", promotion, PROMOTION_KEYS),
    ):
        extra = sorted(set(table) - set(keys))
        if extra:
            raise ConfigError(
                f"{path}: unknown [{section}] key(s) {', '.join(extra)}; keys are: "
                f"{', '.join(keys)}"
            )
    root = registry.get("root")
    if root is not None and not (isinstance(root, str) and root):
        raise ConfigError(f"{path}: [registry] root must be a directory path")
    if promotion and root is None:
        raise ConfigError(f"{path}: [promotion] needs [registry] root (where models are published)")
    settings = {**PROMOTION_DEFAULTS, **{k: v for k, v in promotion.items() if k != "eval_input"}}
    if settings["metric"] not in PROMOTION_METRICS:
        raise ConfigError(
            f"{path}: [promotion] metric must be one of {', '.join(PROMOTION_METRICS)}, "
            f"not {settings['metric']!r}"
        )
    for key in ("tolerance", "floor"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ConfigError(f"{path}: [promotion] {key} must be a number in [0, 1]")
    eval_inputs = ()
    if "eval_input" in promotion:
        eval_inputs = _patterns(promotion["eval_input"], "[promotion] eval_input", base)
    return (_local_or_url(root, base) if root else None), settings, eval_inputs


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
            config.registry_root or dirs[TRAIN_STAGE],
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


def _checked(
    stage: str, parser, fixed: list[str], section: dict, beam: dict, where: str
) -> list[str]:
    """`fixed` + the section's flags, parsed by the stage's parser (ConfigError naming
    `[where]` when they do not parse)."""
    _check_keys(stage, section, parser_flags(parser), beam)
    try:
        own = fixed + flags_from_mapping(parser, section)
    except ValueError as err:
        raise ConfigError(f"[{where}] {err}") from None
    error = io.StringIO()
    try:
        with contextlib.redirect_stderr(error):
            _, rest = parser.parse_known_args(own)
    except SystemExit:
        reason = error.getvalue().strip().splitlines()[-1:] or ["invalid settings"]
        raise ConfigError(f"[{where}] {reason[0].split(': error: ', 1)[-1]}") from None
    if rest:
        raise ConfigError(f"[{where}] not understood: {' '.join(rest)}")
    return own


def stage_argvs(config: RunConfig, run_dir: str) -> dict[str, list[str]]:
    """Each stage's full command line; checked with the stage's parser before anything runs."""
    run_flags = _run_flags(config, stage_dirs(run_dir))
    argvs = {}
    for stage in STAGES:
        parser = stage_parser(stage)
        section = config.settings[stage]
        if stage == TRAIN_STAGE:
            section = train_section(config, (config.architectures or (None,))[0])
        if stage == SCORE_STAGE:  # read as `textclf evaluate` reads the same files
            section = {**_score_reading(config), **section}
        own = _checked(stage, parser, run_flags[stage], section, config.beam, stage)
        beam = flags_from_mapping(parser, config.beam) if stage in BEAM_STAGES else []
        argvs[stage] = (own, beam)
    for _, beam in argvs.values():  # after every stage's own check: that message is clearer
        unknown = unknown_beam_flags(beam)
        if unknown:
            raise ConfigError(f"[beam] not a Beam option: {' '.join(unknown)}")
    return {stage: own + beam for stage, (own, beam) in argvs.items()}


def promote_argv(config: RunConfig, run_dir: str, decision_file: str) -> list[str]:
    """`textclf promote`'s command line for the run's candidate model: evaluated against the
    registry's champion on [promotion] eval_input, else on the run's own eval split."""
    dirs = stage_dirs(run_dir)
    p = config.promotion
    if config.eval_inputs:
        rows = ["--eval_input", *config.eval_inputs, "--text_column", config.text_column,
                "--label_column", config.label_column]  # fmt: skip
        rows += _reading_flags(config)
    else:
        rows = ["--eval_data", dirs[PREPROCESS_STAGE]]
    return [
        "--candidate",
        dirs[TRAIN_STAGE],
        "--registry",
        config.registry_root,
        *rows,
        "--metric",
        str(p["metric"]),
        "--tolerance",
        repr(float(p["tolerance"])),
        "--floor",
        repr(float(p["floor"])),
        "--decision_file",
        decision_file,
    ]


def evaluate_argv(config: RunConfig, model_dir: str, output: str) -> list[str]:
    """`textclf evaluate`'s command line: one model on the run's scored inputs, by label."""
    argv = ["--model_dir", model_dir, "--input", *config.score_inputs,
            "--text_column", config.text_column, "--label_column", config.label_column]  # fmt: skip
    # The score inputs are read as score reads them (_score_reading).
    section = config.settings[PREPROCESS_STAGE]
    label = [f"--label_delimiter={section['label_delimiter']}"] if section.get(
        "label_delimiter") is not None else []  # fmt: skip
    reading = {**_score_reading(config), **{
        k: v for k, v in config.settings[SCORE_STAGE].items()
        if k in ("format", "csv_delimiter") and v is not None}}  # fmt: skip
    return [*argv, *label, *(f"--{k}={v}" for k, v in reading.items()), "--output", output]


def _score_reading(config: RunConfig) -> dict:
    """How the score inputs are read unless [score] says: [preprocess]'s CSV delimiter, and
    its format only when a score pattern's extension does not name one (a CSV-trained model
    may score Parquet files)."""
    reading = _preprocess_reading(config, ("format", "csv_delimiter"))
    try:
        for pattern in config.score_inputs:
            format_for(pattern)
        reading.pop("format", None)  # every extension says its format
    except CorpusError:
        pass
    return reading


def _preprocess_reading(config: RunConfig, keys: tuple[str, ...]) -> dict:
    """The [preprocess] settings among `keys` that the config sets."""
    section = config.settings[PREPROCESS_STAGE]
    return {key: section[key] for key in keys if section.get(key) is not None}


def _reading_flags(config: RunConfig) -> list[str]:
    """How [preprocess] reads the corpus (label delimiter, format, CSV delimiter), for the gate's
    and `textclf evaluate`'s readers of a fixed set of files."""
    section = config.settings[PREPROCESS_STAGE]
    return [
        f"--{key}={section[key]}"
        for key in ("label_delimiter", "format", "csv_delimiter")
        if section.get(key) is not None
    ]
