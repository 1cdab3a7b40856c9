"""``medmtl infer``: check cases, options and output folder up front, then run the bundle's config.

The arguments are defined in :mod:`medmtl.commands.infer` (no heavy imports, so help and argument
errors answer at once); this module does the work.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from medmtl.bundle_config import MODEL_CONFIG_FILE, bundle_file, check_weights, read_model_config
from medmtl.contrasts import CONTRASTS, canonical
from medmtl.datalist import datalist_root
from medmtl.engine_logs import quiet_inference_logs
from medmtl.inference.cases import case_entry, check_cases, datalist_cases, shard
from medmtl.inference.outputs import check_output_dir, check_replaceable, existing_outputs, pending_cases


def check_device(name: str, option: str = "--device") -> str:
    """Check a torch device name a user gave, before any work is done.

    Args:
        name: e.g. ``cpu``, ``cuda``, ``cuda:1``.
        option: the option's name, for the message.

    Returns:
        The name, unchanged.

    Raises:
        ValueError: for a name torch does not know, or a CUDA device this machine does not have.
    """
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{option} {name!r}: expected a torch device such as cpu, cuda or cuda:0") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name!r}: this machine has no CUDA device (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise ValueError(f"{option} {name!r}: expected cpu or cuda[:N]")
    return name


def check_options(args: argparse.Namespace) -> None:
    """Check the numeric and device options of ``medmtl infer`` before any work is done.

    Args:
        args: the parsed arguments.

    Raises:
        ValueError: naming the option, the value and what was expected.
    """
    for opt in ("device", "sw_device"):
        if getattr(args, opt, None):
            check_device(getattr(args, opt), "--" + opt.replace("_", "-"))
    overlap = getattr(args, "overlap", None)
    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise ValueError(f"--overlap {overlap}: expected a fraction in [0, 1)")
    sw = getattr(args, "sw_batch_size", None)
    if sw is not None and sw < 1:
        raise ValueError(f"--sw-batch-size {sw}: expected a positive integer")
    for opt in ("min_component_ml", "et_min_ml"):
        ml = getattr(args, opt, None)
        if ml is not None and ml < 0:
            raise ValueError(f"--{opt.replace('_', '-')} {ml}: expected a volume >= 0 (ml)")


#: Errors a user can act on; the CLI reports them in one line. OSError covers what the system refuses
#: (a full disk, a read-only folder: :class:`medmtl.io.OutputWriteError` names the file).
USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    ValueError,
    OSError,
)


def user_error(err: BaseException) -> BaseException | None:
    """The user error (missing file, bad case, existing output, ...) behind a wrapped exception.

    MONAI's bundle parser and ``Compose`` wrap what a config expression or a transform raises in a
    ``RuntimeError``; the cause chain still holds the original, whose message says what is wrong.

    Args:
        err: the exception caught.

    Returns:
        The first exception of a :data:`USER_ERRORS` type in the chain, or None.
    """
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, USER_ERRORS):
            return cur
        remote = _worker_error(cur)
        if remote is not None:
            return remote
        cur = cur.__cause__ or cur.__context__
    return None


def _worker_error(err: BaseException) -> BaseException | None:
    """The user error a data-loader worker raised: torch re-raises it as text in the parent process.

    The worker's traceback arrives in the message, its last line ``ValueError: <what>``; the
    exception object itself (and its type, when a MONAI transform wrapped it) stays in the worker.
    """
    text = str(err)
    if "DataLoader worker process" not in text:
        return None
    by_name = {t.__name__: t for t in USER_ERRORS}
    for line in reversed(text.splitlines()):
        name, sep, message = line.strip().partition(": ")
        if sep and name in by_name:
            return by_name[name](message)
    return None


def found_in(entry: dict[str, Any]) -> str:
    """Where a case was found, for the console: its folder(s) and the contrasts found there.

    Args:
        entry: an entry of :func:`medmtl.inference.cases.case_entry`.

    Returns:
        e.g. ``/data/case1 (t1n, t2w, t2f)``.
    """
    files = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
    folders = sorted({str(Path(f).parent) for f in files})
    return f"{', '.join(folders)} ({', '.join(entry.get('contrasts') or [])})"


def bundle_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from CLI arguments (shared by ``medmtl infer`` and the demo)."""
    ov: dict[str, Any] = {"output_dir": str(Path(args.out).resolve())}
    if getattr(args, "exported", None):
        from medmtl.inference.exported import inference_overrides

        if not Path(args.exported).is_file():
            raise FileNotFoundError(f"exported model {args.exported} does not exist")
        ov.update(inference_overrides(args.exported))
    if getattr(args, "overwrite", False):
        ov["overwrite"] = True
    if getattr(args, "restorations", False):
        ov["restorations"] = True
    if getattr(args, "tta", False):
        ov["tta"] = True
    if getattr(args, "probabilities", False):
        ov["write_probabilities"] = True
    if getattr(args, "regions", False):
        ov["write_regions"] = True
    if getattr(args, "convention", None):
        ov["output_convention"] = args.convention
    if getattr(args, "device", None):
        ov["device"] = f"$torch.device('{args.device}')"
    if getattr(args, "sw_device", None):
        ov["sw_device"] = f"$torch.device('{args.sw_device}')"
    if getattr(args, "overlap", None) is not None:
        ov["overlap"] = args.overlap
    if getattr(args, "min_component_ml", None) is not None:
        ov["min_component_ml"] = args.min_component_ml
    if getattr(args, "et_min_ml", None) is not None:
        ov["et_min_ml"] = args.et_min_ml
    if getattr(args, "thresholds", None):
        ov["thresholds"] = [float(t) for t in args.thresholds]
    if getattr(args, "sw_batch_size", None):
        ov["sw_batch_size"] = args.sw_batch_size
    return ov


def _case_entry(case: Any) -> dict:
    """:func:`case_entry`, naming ``--preprocess`` when the case is a raw study it would fix."""
    try:
        return case_entry(case)
    except ValueError as err:
        from medmtl.preprocessing.study import preprocess_hint

        hint = preprocess_hint(str(err), case)
        if hint is None:
            raise
        raise ValueError(hint) from None


def cli_main(args: argparse.Namespace) -> int:
    """Run ``medmtl infer``: check cases and output folder up front, then run the bundle's inference config.

    Everything a user can get wrong about a case's files (a missing or unreadable file, a 2D/4D
    image, contrasts on different grids, a missing input contrast, an existing output without
    ``--overwrite``, an unwritable output folder) is reported before any output is written, from the
    headers. The voxel data are read once, when the case runs: a truncated file or non-finite
    values stop the run there with one line naming the file; finished cases stay, and a rerun
    resumes after them.
    """
    from monai.bundle import run

    explicit = {c: getattr(args, c) for c in CONTRASTS if getattr(args, c, None)}
    if not (args.cases or args.datalist or explicit):
        raise ValueError("give case folders, --datalist, or explicit --t1n/--t1c/--t2w/--t2f files")
    check_options(args)
    if getattr(args, "preprocess", False):
        from medmtl.preprocessing.run import run_preprocessed

        return run_preprocessed(args, explicit, cli_main)
    if getattr(args, "reference", None) or getattr(args, "save_preprocessed", False):
        raise ValueError("--reference and --save-preprocessed apply with --preprocess only")
    bundle = Path(args.bundle).resolve()
    config = bundle_file(bundle)
    model = read_model_config(bundle / "models" / MODEL_CONFIG_FILE)
    if not getattr(args, "exported", None):
        check_weights(bundle / "models" / "model.pt")
    targets = [canonical(c) for c in model["target_contrasts"]]
    out = check_output_dir(args.out)
    ov = bundle_overrides(args)
    restorations = bool(getattr(args, "restorations", False))
    inputs = model["input_contrasts"]
    if args.datalist:
        entries = datalist_cases(args.datalist, args.dataset_dir, args.section)
        ov["datalist"] = str(Path(args.datalist).resolve())
        # The root the datalist records (else its own folder) unless given: never the bundle's default.
        ov["dataset_dir"] = str(datalist_root(args.datalist, args.dataset_dir))
        ov["section"] = args.section
    else:
        entries = [_case_entry(c) for c in args.cases]
        if explicit:
            entries.append(_case_entry(explicit))
        ids = [e["case_id"] for e in entries]
        if len(set(ids)) != len(ids):
            raise ValueError(f"two inputs share a case id: {ids}")
        for e in entries:
            print(f"medmtl infer: case {e['case_id']}: {found_in(e)}", flush=True)
    # Finished cases are skipped (a rerun resumes, for case folders as for datalists); only the rest
    # is checked.
    entries = pending_cases(shard(entries), out, targets, args.overwrite, restorations, inputs)
    check_cases(entries, inputs, bool(model["input_mask"]))
    check_replaceable(existing_outputs(entries, out, targets, restorations, inputs), out)
    # The config runs exactly these cases: found, checked and filtered once, here.
    ov["entries"] = entries
    quiet = nullcontext() if getattr(args, "verbose", False) else quiet_inference_logs()
    try:
        with quiet:
            run(
                config_file=str(config),
                meta_file=str(bundle / "configs" / "metadata.json"),
                logging_file=str(bundle / "configs" / "logging.conf"),
                bundle_root=str(bundle),
                **ov,
            )
    except RuntimeError as err:
        cause = user_error(err)
        if cause is None:
            raise
        raise cause from None
    return 0
