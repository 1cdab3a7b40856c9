"""``medmtl export``: the trained network as TorchScript or ONNX, checked against PyTorch."""

from __future__ import annotations

import argparse

from medmtl.bundle_config import EXPORT_FORMATS, NETWORK_OUTPUTS
from medmtl.commands.arg_types import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medmtl export``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument(
        "--bundle", required=True, help="trained bundle folder (models/model.pt + model_config.json)"
    )
    parser.add_argument("--format", required=True, choices=sorted(EXPORT_FORMATS), help="export format")
    parser.add_argument("--out", help="output file (default: BUNDLE/models/model.ts or model.onnx)")
    parser.add_argument(
        "--branch", choices=list(NETWORK_OUTPUTS), help="export one output only, as a single tensor"
    )
    parser.add_argument("--opset", type=positive_int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def main(args: argparse.Namespace) -> int:
    """Run ``medmtl export`` (see :func:`medmtl.export.cli_main`)."""
    from medmtl.export import cli_main

    return cli_main(args)
