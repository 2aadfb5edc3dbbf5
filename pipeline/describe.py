"""`textclf describe`: print the model's layers, output shapes, head and loss, and why.

With `--model_dir` it describes a trained model from its model_card.json (sizes, head and the
preprocess config it was trained on); with `--data_dir` it describes the model that `textclf
train` would build on that preprocess output with the given size and head flags, without
training anything. The explanations themselves live in transforms/model.py.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline import outputs
from pipeline.train import (
    BadInput,
    add_model_arguments,
    head_for,
    model_settings,
    read_preprocess_config,
)
from transforms.contracts import EXIT_BAD_INPUT, MODEL_CARD_FILE, SUCCESS_FILE
from transforms.model import Head, ModelSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textclf describe",
        description="Print each layer with its output shape and what it does, then the head and "
        "loss and why. Give a trained --model_dir, or a preprocess --data_dir plus size flags.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_dir", help="a finished `textclf train` output")
    source.add_argument("--data_dir", help="a finished preprocess output (no training needed)")
    add_model_arguments(parser)
    return parser


def _from_model_dir(model_dir: str) -> tuple[dict, ModelSettings, Head]:
    if not outputs.is_complete(model_dir):
        raise BadInput(
            f"{model_dir} has no {SUCCESS_FILE}: it is not a finished model; run `textclf train "
            "--model_dir` there first, or describe a --data_dir instead"
        )
    card = outputs.read_json(os.path.join(model_dir, MODEL_CARD_FILE))
    return card["preprocess_config"], ModelSettings(**card["model"]), Head(**card["head"])


def describe(model_dir: str | None = None, data_dir: str | None = None, **settings) -> str:
    """The description text; sizes/head flags apply only with `data_dir`."""
    if model_dir:
        config, model_settings_, head = _from_model_dir(model_dir)
    else:
        opts = build_parser().parse_args(["--data_dir", data_dir])
        for key, value in settings.items():
            setattr(opts, key, value)
        config = read_preprocess_config(data_dir)
        model_settings_, head = model_settings(opts), head_for(config, opts)

    from transforms.model import build_model, describe_model

    model = build_model(
        int(config["sequence_length"]),
        int(config["id_vocabulary_size"]),
        int(config["num_classes"]),
        model_settings_,
        head,
    )
    return describe_model(model, head)


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
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
