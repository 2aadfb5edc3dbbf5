"""`textclf demo`: the whole chain on the embedded 20 Newsgroups data, with a short summary.

This module owns the demo's wiring only: it prepares the corpus once under `<root>/datasets/`
(pipeline/datasets.py; cached), writes the demo config (configs/20newsgroups.toml, with any
command-line overrides) into `<root>`, runs `textclf run` on it (pipeline/run.py: the train split
is preprocessed, trained on, and the official test split scored with its label passed through),
and prints rows, eval and test accuracy and where the report is. Settings are tuned in the config
file, not here.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import sys
import time
import tomllib
from pathlib import Path

from pipeline import datasets, outputs, run
from transforms.contracts import EXIT_BAD_INPUT, MANIFEST_FILE, REPORT_FILE, RUN_LOCK_FILE

_LOG = logging.getLogger("textclf.demo")
DATASET = "20newsgroups"
CONFIG_TEMPLATE = Path(__file__).resolve().parents[1] / "configs" / f"{DATASET}.toml"
# What the demo writes in its root: the cached corpus, its config and one directory per run date.
DEMO_ROOT_ENTRIES = (
    "datasets/",
    f"{DATASET}.toml",
    "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]/",
    RUN_LOCK_FILE,  # `textclf run` locks its root
)


def toml_dumps(config: dict) -> str:
    """A TOML document for tables (and sub-tables) of scalars and lists of scalars: all the run
    config holds (hand-written so the package needs no TOML writer; tomllib only reads)."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} {v!r} to the config")

    lines = []

    def table(name: str, values: dict) -> None:
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {value(v)}" for k, v in values.items() if not isinstance(v, dict))
        lines.append("")
        for k, v in values.items():
            if isinstance(v, dict):  # a sub-table, e.g. [train.tfidf_linear]
                table(f"{name}.{k}", v)

    for section, values in config.items():
        table(section, values)
    return "\n".join(lines)


def prepare_data(root: str) -> str:
    """`<root>/datasets/20newsgroups/{train,test}.parquet`, written once and reused."""
    out = os.path.join(root, "datasets", DATASET)
    if all(os.path.exists(os.path.join(out, f"{s}.parquet")) for s in ("train", "test")):
        _LOG.info("demo: using the prepared corpus in %s", out)
    else:
        _LOG.info("demo: preparing %s into %s", DATASET, out)
        for split, info in datasets.prepare(DATASET, out).items():
            _LOG.info("demo: %s: %d rows, %d classes", split, info["rows"], info["classes"])
    return out


def write_config(root: str, overrides: dict[str, dict]) -> str:
    """The template config plus overrides, written to `<root>/20newsgroups.toml`."""
    with open(CONFIG_TEMPLATE, "rb") as f:
        config = tomllib.load(f)
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    path = os.path.join(root, f"{DATASET}.toml")
    header = (
        f"# Written by `textclf demo` from {CONFIG_TEMPLATE.name} (tune settings there).\n"
        "# Rerun this exact job with: textclf run --config <this file> --root <its dir>\n\n"
    )
    outputs.write_text(path, header + toml_dumps(config))
    return path


def summary(manifest: dict, run_dir: str, seconds: float) -> str:
    stages = manifest.get("stages", {})
    pre = stages.get("preprocess", {}).get("rows") or {}
    scored = stages.get("score", {}).get("rows") or {}
    written = pre.get("rows_written") or {}
    eval_metrics = (manifest.get("metrics") or {}).get("eval") or {}
    test_metrics = (manifest.get("metrics") or {}).get("scored") or {}

    statuses = ", ".join(f"{s} {stages.get(s, {}).get('status')}" for s in run.STAGES)

    def pct(v):
        return f"{100 * v:.1f}%" if isinstance(v, int | float) else "n/a"

    return "\n".join(
        [
            f"20 Newsgroups demo finished in {seconds:.0f}s ({statuses})",
            f"  train split: {pre.get('rows_read')} rows -> {written.get('train')} train / "
            f"{written.get('eval')} eval, {pre.get('rows_dead_lettered')} dead-lettered",
            f"  eval accuracy {pct(eval_metrics.get('accuracy'))}, "
            f"macro-F1 {pct(eval_metrics.get('macro_f1'))}",
            f"  test split: {scored.get('rows_read')} rows, {scored.get('rows_scored')} scored, "
            f"{scored.get('rows_dead_lettered')} dead-lettered",
            f"  TEST ACCURACY {pct(test_metrics.get('accuracy'))} "
            f"(macro-F1 {pct(test_metrics.get('macro_f1'))}) on {test_metrics.get('rows')} rows",
            *_compared(manifest),
            f"  report:   {os.path.join(run_dir, REPORT_FILE)}",
            f"  manifest: {os.path.join(run_dir, MANIFEST_FILE)}",
        ]
    )


def _compared(manifest: dict) -> list[str]:
    """One line per architecture the run trained: eval and test accuracy side by side."""
    models = manifest.get("models") or {}
    if len(models) < 2:
        return []

    def pct(v):
        return f"{100 * v:.1f}%" if isinstance(v, int | float) else "n/a"

    lines = ["  models compared (eval split / test split accuracy):"]
    for name, entry in models.items():
        scored = (
            " <- scored" if entry.get("dir") == (manifest.get("model") or {}).get("dir") else ""
        )
        lines.append(
            f"    {name:<14} {pct((entry.get('eval') or {}).get('accuracy'))} / "
            f"{pct((entry.get('scored_rows') or {}).get('accuracy'))}{scored}"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textclf demo",
        description="Prepare 20 Newsgroups, train on its train split, score its test split and "
        "print the test accuracy; everything under ROOT.",
    )
    parser.add_argument(
        "--root", default="demo", help="where data, runs and the config go (default: %(default)s)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override [train] epochs of the demo config (default: the config's)",
    )
    parser.add_argument(
        "--run_date",
        type=run.run_date_arg,
        default=_dt.datetime.now(_dt.UTC).date().isoformat(),
        help="YYYY-MM-DD (default: today, UTC)",
    )
    parser.add_argument(
        "--force", action="store_true", help="redo stages that already finished; off by default"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.time()
    root = os.path.abspath(args.root)
    try:
        outputs.check_replaceable(root, "demo", DEMO_ROOT_ENTRIES)
        run.check_outputs(root, args.run_date)
    except (outputs.OutputNotReplaceable, run.ConfigError) as err:
        print(f"textclf demo: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    os.makedirs(root, exist_ok=True)
    try:
        prepare_data(root)
    except datasets.DatasetError as err:
        print(f"textclf demo: {err}", file=sys.stderr)
        return 1
    overrides = {"train": {"epochs": args.epochs}} if args.epochs is not None else {}
    config_path = write_config(root, overrides)
    _LOG.info("demo: config %s", config_path)
    code = run.main(
        [
            "--config",
            config_path,
            "--root",
            root,
            "--run_date",
            args.run_date,
            *(["--force"] if args.force else []),
        ]
    )
    run_dir = os.path.join(root, args.run_date)
    manifest_path = os.path.join(run_dir, MANIFEST_FILE)
    if code == 0 and os.path.exists(manifest_path):
        print(summary(outputs.read_json(manifest_path), run_dir, time.time() - start))
    return code
