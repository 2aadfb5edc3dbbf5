"""`textclf describe`: print the model's layers, output shapes, head and loss, and why.

With `--model_dir` it describes a trained model from its model_card.json (architecture, sizes,
head and the preprocess config it was trained on); with `--data_dir` it describes the model that
`textclf train` would build on that preprocess output with the given architecture, size and head
flags, without training anything. Both directories are read through pipeline/artifacts.py; the
model, its sizes and head are train's own (`build_model_for`, `model_settings`, `head_for`,
`check_architecture`). The explanations themselves live in transforms/model.py.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.artifacts import IncompleteOutput, ModelOutput, PreprocessOutput
from pipeline.options import parse_own_flags
from pipeline.train import (
    BadInput,
    add_model_arguments,
    build_model_for,
    check_architecture,
    head_for,
    model_settings,
)
from transforms.contracts import EXIT_BAD_INPUT
from transforms.model import Head, ModelSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textclf describe",
        description="Print each layer with its output shape and what it does, then the head and "
        "loss and why. Give a trained --model_dir, or a preprocess --data_dir plus size flags.",
        allow_abbrev=False,  # flags match exactly, as every stage's do (pipeline/options.py)
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model_dir", help="a finished `textclf train` output (this or --data_dir is required)"
    )
    source.add_argument(
        "--data_dir",
        help="a finished preprocess output, no training needed (this or --model_dir is required)",
    )
    add_model_arguments(parser)
    return parser


def _from_model_dir(model_dir: str) -> tuple[dict, ModelSettings, Head]:
    """The trained model's preprocess config, sizes and head, from its model_card.json."""
    model = ModelOutput(model_dir)
    try:
        model.check_finished()
    except IncompleteOutput as err:
        raise BadInput(f"{err}, or describe a --data_dir instead") from None
    card = model.card
    return card["preprocess_config"], ModelSettings(**card["model"]), Head(**card["head"])


def _from_data_dir(data_dir: str, settings: dict) -> tuple[dict, ModelSettings, Head]:
    """The preprocess config, and the sizes and head `textclf train` would use with `settings`."""
    opts = build_parser().parse_args(["--data_dir", data_dir])
    for key, value in settings.items():
        setattr(opts, key, value)
    data = PreprocessOutput(data_dir)
    try:
        data.check_finished()
        config = data.config
    except IncompleteOutput as err:
        raise BadInput(str(err)) from None
    settings_ = model_settings(opts)
    check_architecture(data, settings_)
    return config, settings_, head_for(data.multi_label, opts)


def describe(model_dir: str | None = None, data_dir: str | None = None, **settings) -> str:
    """The description text; sizes/head flags apply only with `data_dir`."""
    if model_dir:
        config, model_settings_, head = _from_model_dir(model_dir)
    else:
        config, model_settings_, head = _from_data_dir(data_dir, settings)

    from transforms.model import describe_model

    return describe_model(build_model_for(config, model_settings_, head), head)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_own_flags(build_parser(), argv, argparse.Namespace())
    try:
        if opts.model_dir:
            text = describe(model_dir=opts.model_dir)
        else:
            flags = {k: v for k, v in vars(opts).items() if k not in ("model_dir", "data_dir")}
            text = describe(data_dir=opts.data_dir, **flags)
    except BadInput as err:
        print(f"textclf describe: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Anything else propagates: pipeline/cli.py prints its traceback and exits 1.
    print(text)
    return 0
