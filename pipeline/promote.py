"""`textclf promote`: the promotion gate between a trained candidate and the registry's champion.

Evaluates the candidate (a finished `textclf train` output) and the registry's current champion
on the same held-out rows with the same code (pipeline/gate.py): a preprocess output's eval split
(`--eval_data`) or a fixed evaluation set (`--eval_input`). The candidate is promoted when its
`--metric` is at least `--floor` and at least the champion's minus `--tolerance` (with no
champion the floor alone decides): it is published as the next version (pipeline/registry.py)
with the decision in its registry.json, and CHAMPION is pointed at it. A refused candidate leaves
the registry untouched. Either way the decision (both models' figures, the reason) is printed as
one line and written to `--decision_file` atomically; the exit code is 0 for both outcomes, 2 for
bad input. A rerun for a model already published publishes nothing: it reports that version, and
points CHAMPION at it only if its promotion was cut short before the pointer was written. This
module owns the command, its flags and that sequence; `textclf run` calls it as a child process.
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
from pipeline.registry import Registry, RegistryError
from transforms.contracts import EXIT_BAD_INPUT

_LOG = logging.getLogger("textclf.promote")

PROMOTED = "promoted"
REFUSED = "refused"


class PromoteOptions(argparse.Namespace):
    """The command's settings: one attribute per flag of `build_parser()`."""

    candidate: str
    registry: str
    eval_data: str | None
    eval_input: list[str] | None
    text_column: str
    label_column: str
    label_delimiter: str | None
    format: str
    csv_delimiter: str | None
    metric: str
    tolerance: float
    floor: float
    decision_file: str | None


def build_parser() -> argparse.ArgumentParser:
    """The command's own flags, the one source of them (the CLI, `textclf run`, the tests)."""
    parser = argparse.ArgumentParser(
        prog="textclf promote",
        description="Evaluate a trained candidate and the registry's champion on the same rows; "
        "publish the candidate as the next registry version and make it the champion when it "
        "passes the gate. Exit 0 whether promoted or refused, 2 for bad input.",
        epilog=BEAM_FLAGS_HELP + " Beam reads the evaluation rows.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--candidate",
        required=True,
        metavar="MODEL_DIR",
        help="a finished `textclf train` output: the model to promote; required",
    )
    parser.add_argument(
        "--registry",
        required=True,
        metavar="ROOT",
        help="the registry root (created on the first promotion); required",
    )
    parser.add_argument(
        "--eval_data",
        default=None,
        metavar="DATA_DIR",
        help="evaluate on this finished preprocess output's eval split, re-read from the input "
        "files its preprocess_config.json names; this or --eval_input is required",
    )
    parser.add_argument(
        "--eval_input",
        nargs="+",
        action="extend",
        default=None,
        metavar="PATTERN",
        help="evaluate on every valid row of these files (a fixed evaluation set: CSV, JSONL, "
        "Parquet, read as preprocess reads them); this or --eval_data is required",
    )
    gate.add_reading_flags(parser, applies_to="--eval_input: ")
    parser.add_argument(
        "--metric",
        default="accuracy",
        help="what the gate compares: accuracy (multi-label: the exact-match ratio) or "
        "macro_f1 (default: accuracy)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="promote when the candidate's metric >= the champion's minus this (default: 0.0)",
    )
    parser.add_argument(
        "--floor",
        type=float,
        default=0.0,
        help="never promote a candidate whose metric is below this; with no champion it "
        "alone decides (default: 0.0)",
    )
    parser.add_argument(
        "--decision_file",
        default=None,
        metavar="PATH",
        help="also write the decision (figures, reason, version) as JSON here, atomically "
        "(default: none; the one-line summary is printed either way)",
    )
    return parser


def parse(argv: Sequence[str]) -> tuple[PromoteOptions, PipelineOptions]:
    """The command's options and Beam's, from one pass over `argv` (see pipeline/options.py)."""
    return parse_beam_stage(build_parser(), argv, PromoteOptions())


def eval_rows(opts: PromoteOptions, multi_label: bool, beam_options: PipelineOptions):
    """The evaluation rows the options name (gate.EvalRows)."""
    if (opts.eval_data is None) == (not opts.eval_input):
        raise gate.GateError(
            "pass exactly one of --eval_data DATA_DIR (a preprocess output's eval split) or "
            "--eval_input PATTERN ... (a fixed evaluation set)"
        )
    if opts.eval_data is not None:
        return gate.eval_split_rows(opts.eval_data, beam_options)
    return gate.rows_from_files(opts.eval_input, opts, multi_label, beam_options)


def promote(opts: PromoteOptions, beam_options: PipelineOptions | None = None) -> dict:
    """Evaluate, decide, publish when promoted; write --decision_file; return the decision.

    Raises (bad input, nothing changed): gate.GateError, RegistryError, IncompleteOutput,
    transforms.corpus_io.CorpusError.
    """
    beam_options = beam_options or PipelineOptions([])
    gate.check_rule(opts.metric, opts.tolerance, opts.floor)
    candidate = ModelOutput(opts.candidate).check_complete()
    registry = Registry(opts.registry)
    champion = registry.champion()
    published = registry.find_version(candidate.model_version)
    if published is not None:
        decision = _already_published(registry, candidate, published, opts)
    else:
        if champion is not None:
            _check_same_kind(candidate, registry, champion)
        rows = eval_rows(opts, candidate.multi_label, beam_options)
        champion_dir = registry.version_dir(champion) if champion is not None else None
        figures, champion_figures = gate.evaluate_models(candidate.dir, champion_dir, rows)
        promoted, reason = gate.decide(
            opts.metric,
            figures[opts.metric],
            champion_figures[opts.metric] if champion_figures else None,
            champion,
            opts.tolerance,
            opts.floor,
        )
        decision = {
            "decision": PROMOTED if promoted else REFUSED,
            "reason": reason,
            "metric": opts.metric,
            "tolerance": opts.tolerance,
            "floor": opts.floor,
            "registry": registry.root,
            "candidate": {
                "model_dir": outputs.normalized(candidate.dir),
                "model_version": candidate.model_version,
                "metrics": figures,
            },
            "champion": None
            if champion is None
            else {
                "version": champion,
                "model_version": registry.record(champion).get("model_version"),
                "metrics": champion_figures,
            },
            "eval": rows.describe(),
            "version": None,
            "champion_after": champion,
            "already_published": False,
            "decided_at": outputs.now(),
        }
        if promoted:
            with registry.locked():
                now = registry.champion()
                if now != champion:
                    raise RegistryError(
                        f"the champion of {registry.root} changed from {champion} to {now} "
                        f"while the candidate was evaluated; run textclf promote again"
                    )
                gate_record = {
                    k: v for k, v in decision.items() if k not in ("version", "champion_after")
                }
                n = registry.publish(candidate.dir, {"gate": gate_record})
                registry.set_champion(n)
            decision.update(version=n, champion_after=n)
    if opts.decision_file:  # (missing local parent directories are created)
        outputs.write_json_atomic(opts.decision_file, decision)
    return decision


def _check_same_kind(candidate: ModelOutput, registry: Registry, champion: int) -> None:
    champ = ModelOutput(registry.version_dir(champion))
    if champ.multi_label != candidate.multi_label:
        kind = {True: "multi-label", False: "single-label"}
        raise gate.GateError(
            f"the candidate is {kind[candidate.multi_label]} but champion v{champion} of "
            f"{registry.root} is {kind[champ.multi_label]}; their figures are not comparable: "
            f"publish it to another registry root"
        )


def _already_published(
    registry: Registry, candidate: ModelOutput, n: int, opts: PromoteOptions
) -> dict:
    """A rerun for a model already published as version `n`: nothing is published; CHAMPION
    is pointed at `n` only when its recorded decision is a promotion, no later version exists
    and `n` was never champion (CHAMPION.history): the earlier promotion stopped between
    publishing and the pointer. A pointer rolled back by hand stays."""
    record = registry.record(n)
    earlier = dict(record.get("gate") or {})
    champion = registry.champion()
    pointer = ""
    ever_champion = any(h.get("version") == n for h in registry.champion_history())
    if (
        earlier.get("decision", PROMOTED) == PROMOTED
        and champion != n
        and not ever_champion  # cut short; a pointer rolled back by hand stays
        and max(registry.versions()) == n
    ):
        registry.set_champion(n)
        pointer = f"; CHAMPION pointed at {champion} and now points at it"
        champion = n
    reason = (
        f"model_version {candidate.model_version} is already published as version {n} "
        f"(at {record.get('published_at')}); nothing was published again{pointer}"
    )
    earlier.update(
        decision=PROMOTED,
        reason=reason,
        metric=earlier.get("metric", opts.metric),
        tolerance=earlier.get("tolerance", opts.tolerance),
        floor=earlier.get("floor", opts.floor),
        registry=registry.root,
        candidate=earlier.get("candidate")
        or {
            "model_dir": outputs.normalized(candidate.dir),
            "model_version": candidate.model_version,
            "metrics": None,
        },
        champion=earlier.get("champion"),
        eval=earlier.get("eval"),
        version=n,
        champion_after=champion,
        already_published=True,
        decided_at=outputs.now(),
    )
    return earlier


def summary(decision: dict) -> str:
    """The one line printed for a decision."""
    model_version = decision["candidate"]["model_version"]
    if decision["decision"] == PROMOTED:
        head = (
            f"promoted: {model_version} is version {decision['version']} of "
            f"{decision['registry']}; the champion is v{decision['champion_after']}"
        )
    else:
        after = decision["champion_after"]
        head = f"refused: {model_version} was not published; the champion " + (
            f"stays v{after}" if after is not None else "is still none"
        )
    return f"{head} ({decision['reason']})"


def main(argv: Sequence[str]) -> int:
    from transforms.corpus_io import CorpusError

    opts, beam_options = parse(argv)
    try:
        decision = promote(opts, beam_options)
    except (gate.GateError, RegistryError, IncompleteOutput, CorpusError) as err:
        print(f"textclf promote: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary(decision))
    return 0
