"""``medmtl infer --preprocess``: raw studies made BraTS-like, the one inference run, outputs mapped back.

The step before writes each preprocessed study as an ordinary case (BraTS 2023 file names, 1 mm) in a
temporary folder; the ordinary ``medmtl infer`` then runs on those cases into a second temporary
folder; the step after maps every output onto the reference contrast's grid in the user's folder.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from medmtl.io import write_nifti


def _out_files(out: Path, case_id: str, targets: list[str], save: bool) -> list[Path]:
    from medmtl.inference.outputs import output_paths

    files = [*output_paths(out, case_id, targets).values(), out / f"{case_id}_brain_mask.nii.gz"]
    if save:
        files += list((out / "preprocessed" / case_id).glob(f"{case_id}-*"))
    return files


def run_preprocessed(
    args: argparse.Namespace, explicit: Mapping[str, str], run_cases: Callable[[argparse.Namespace], int]
) -> int:
    """Preprocess the studies of ``args``, run inference on them with ``run_cases``, map outputs back.

    Args:
        args: ``medmtl infer`` arguments with ``preprocess`` set.
        explicit: ``{contrast: file or DICOM folder}`` given with ``--t1n`` etc.
        run_cases: the ordinary ``medmtl infer`` (called once, on every preprocessed study).

    Returns:
        The exit status (0).

    Raises:
        ValueError: for a datalist, a failed registration or brain mask (naming the contrast), or
            unusable input (naming the file).
        FileExistsError: when a file medmtl did not write stands where an output goes.
    """
    import torch

    from medmtl.bundle_config import MODEL_CONFIG_FILE, read_model_config
    from medmtl.contrasts import canonical
    from medmtl.inference.outputs import check_output_dir, check_replaceable, output_paths
    from medmtl.preprocessing.dicom import study_sources
    from medmtl.preprocessing.study import map_case_outputs, preprocess_study

    if args.datalist:
        raise ValueError(
            "--preprocess takes study folders or explicit --t1n/--t1c/--t2w/--t2f, not --datalist"
        )
    studies = [study_sources(c) for c in args.cases]
    if explicit:
        studies.append(study_sources(explicit))
    ids = [cid for cid, _ in studies]
    if len(set(ids)) != len(ids):
        raise ValueError(f"two studies share a case id: {ids}")
    out = check_output_dir(args.out)
    model = read_model_config(Path(args.bundle).resolve() / "models" / MODEL_CONFIG_FILE)
    targets = [canonical(c) for c in model["target_contrasts"]]
    # A study whose sidecar exists is finished (its files are renamed into place together, sidecar
    # last): a rerun skips it, as for ordinary cases; --overwrite redoes it.
    finished = [] if args.overwrite else [cid for cid in ids if output_paths(out, cid)["sidecar"].is_file()]
    for cid in finished:
        print(f"medmtl: {cid}: finished before in {out}, skipped (--overwrite redoes it)", flush=True)
    studies = [(cid, sources) for cid, sources in studies if cid not in finished]
    existing = [str(p) for cid, _ in studies for p in _out_files(out, cid, targets, args.save_preprocessed)]
    check_replaceable([p for p in existing if Path(p).exists()], out)  # never a file medmtl did not write
    if not studies:
        print(f"medmtl infer: nothing to run, every study is finished in {out}")
        return 0
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="medmtl_preprocess_") as tmp:
        cases_dir, run_dir = Path(tmp) / "cases", Path(tmp) / "outputs"
        done = []
        for cid, sources in studies:
            study = preprocess_study(sources, reference=args.reference, device=device)
            study.case_id = cid
            fit = ", ".join(f"{c} {r.metric:.2f}" for c, r in study.registrations.items())
            print(
                f"medmtl: {cid}: registered to {study.reference} (mutual information {fit or '-'}); "
                f"brain mask {study.brain_ml:.0f} ml ({study.brain_method})",
                flush=True,
            )
            for c, arr in study.images.items():
                # BraTS 2023 file names: the ordinary case discovery reads them as one case.
                write_nifti(cases_dir / cid / f"{cid}-{c}.nii.gz", arr, study.affine, np.float32)
            done.append(study)
        run_args = copy.copy(args)
        run_args.preprocess, run_args.save_preprocessed, run_args.reference = False, False, None
        for c in ("t1n", "t1c", "t2w", "t2f"):
            setattr(run_args, c, None)
        run_args.cases = [str(cases_dir / s.case_id) for s in done]
        run_args.out, run_args.overwrite = str(run_dir), True
        run_cases(run_args)
        for study in done:
            tfm: dict[str, str] = {}
            if args.save_preprocessed:
                # only medmtl's own files stand there (checked above): an unfinished run's are replaced
                saved = study.save(out / "preprocessed" / study.case_id, overwrite=True)
                tfm = {k[: -len("_tfm")]: v for k, v in saved.items() if k.endswith("_tfm")}
            map_case_outputs(
                study, run_dir, out, tfm, convention_source=None if args.convention else "default (raw study)"
            )
    print(f"medmtl infer: {len(done)} study(ies) mapped onto their reference contrast's grid in {out}")
    return 0
