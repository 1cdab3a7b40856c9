"""``medmtl infer``: sliding-window inference, a label map and synthesised contrasts per case."""

from __future__ import annotations

import argparse

from medmtl.bundle_config import DEFAULT_BUNDLE
from medmtl.commands.arg_types import device_name, fraction, positive_int, probability, volume_ml
from medmtl.contrasts import CONTRASTS
from medmtl.conventions import OUTPUT_CONVENTIONS
from medmtl.datalist import DATALIST_SECTIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medmtl infer``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("cases", nargs="*", help="case folders (any supported layout)")
    parser.add_argument("--datalist", help="a medmtl datalist; its cases are run (see --section)")
    parser.add_argument("--dataset-dir", help="root the datalist's paths are relative to (default: its own)")
    parser.add_argument(
        "--section", default="all", choices=list(DATALIST_SECTIONS), help="datalist section(s) to run"
    )
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle folder (default: shipped)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="redo finished cases (a rerun skips them otherwise)"
    )
    parser.add_argument(
        "--restorations",
        action="store_true",
        help="also write synthesised versions of the contrasts a case has (default: only missing ones)",
    )
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (4 passes)")
    parser.add_argument("--probabilities", action="store_true", help="also write region probabilities")
    parser.add_argument("--regions", action="store_true", help="write TC/WT/ET region masks, not a label map")
    parser.add_argument(
        "--convention", choices=list(OUTPUT_CONVENTIONS), help="output label values (default: the input's)"
    )
    parser.add_argument("--device", type=device_name, help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--sw-device",
        type=device_name,
        help="device for the sliding windows' stitching (e.g. cpu for huge volumes)",
    )
    parser.add_argument("--overlap", type=fraction, help="sliding-window overlap, in [0, 1)")
    parser.add_argument(
        "--min-component-ml",
        type=volume_ml,
        help="drop whole-tumour components smaller than this (ml; 0 keeps all)",
    )
    parser.add_argument(
        "--et-min-ml",
        type=volume_ml,
        help="a predicted enhancing tumour smaller than this (ml) becomes NETC (BraTS ET rule; 0: off)",
    )
    parser.add_argument(
        "--thresholds",
        type=probability,
        nargs=3,
        metavar=("TC", "WT", "ET"),
        help="region probability thresholds (default: the model's, chosen on validation; else 0.5)",
    )
    parser.add_argument("--sw-batch-size", type=positive_int, help="windows per forward pass")
    parser.add_argument("--exported", help="run a TorchScript/ONNX file from `medmtl export`, not model.pt")
    for c in CONTRASTS:
        parser.add_argument(
            f"--{c}", help=f"explicit {c} file or DICOM series folder (instead of a case folder)"
        )
    parser.add_argument(
        "--preprocess",
        action="store_true",
        help="raw study in (own grids, skull on, NIfTI or DICOM): co-register to --reference, 1 mm, "
        "brain extraction (HD-BET); outputs and brain mask on the reference's own grid",
    )
    parser.add_argument(
        "--reference",
        choices=list(CONTRASTS),
        help="with --preprocess: the contrast the others are registered to (default t1c, else t1n, t2f, t2w)",
    )
    parser.add_argument(
        "--save-preprocessed",
        action="store_true",
        help="with --preprocess: also write the 1 mm co-registered images, the brain mask and the "
        "transforms (ITK .tfm) to OUT/preprocessed/CASE/ (a case folder medmtl reads as it is)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``medmtl infer`` (see :func:`medmtl.inference.cli.cli_main`)."""
    from medmtl.inference.cli import cli_main

    return cli_main(args)
