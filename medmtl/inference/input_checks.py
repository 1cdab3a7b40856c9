"""What a case's inputs say about how far its outputs can be trusted, found in the scan's own voxels.

The shipped model was trained on BraTS cases: skull-stripped brains (zeros outside), the whole brain
inside the field of view, and t1c among the contrasts. A case outside that gets outputs all the same,
with a one-line warning on the console and the same facts in its sidecar (``input_warnings``,
``region_confidence``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medmtl.contrasts import canonical
from medmtl.labels import REGIONS

#: Share of the field of view's border voxels that are non-zero above which the background counts as
#: not zero (a scan that is not skull-stripped). A skull-stripped BraTS scan has none or a few percent.
BACKGROUND_BORDER_FRACTION = 0.5
#: A face of the field of view whose brain cross-section is at least this share of the brain's largest
#: cross-section along that axis cuts the brain (the shared BraTS cases reach 0.2 at the foramen magnum).
FOV_CUT_FRACTION = 0.35
#: The regions whose evidence is t1c enhancement: without t1c they are estimates.
T1C_REGIONS: tuple[str, ...] = ("TC", "ET")
#: the six faces of a volume, in axis order
FACES: tuple[str, ...] = (
    "axis 0 start",
    "axis 0 end",
    "axis 1 start",
    "axis 1 end",
    "axis 2 start",
    "axis 2 end",
)


def background_fraction(brain: np.ndarray) -> float:
    """Share of the volume's border voxels that are non-zero (part of ``brain``).

    Args:
        brain: boolean mask (H, W, D) of the voxels where any contrast is non-zero.

    Returns:
        A fraction in [0, 1].
    """
    b = np.asarray(brain, bool)
    border = np.ones(b.shape, bool)
    border[1:-1, 1:-1, 1:-1] = False
    return float(b[border].mean()) if border.any() else 0.0


def cut_faces(brain: np.ndarray, fraction: float = FOV_CUT_FRACTION) -> list[str]:
    """The faces of the field of view that cut through the brain.

    Args:
        brain: boolean mask (H, W, D) of the brain.
        fraction: a face cuts the brain when its brain cross-section is at least this share of the
            largest cross-section along its axis.

    Returns:
        Names of the faces (:data:`FACES`), empty when the brain lies inside the field of view.
    """
    b = np.asarray(brain, bool)
    out = []
    for axis in range(3):
        sections = b.sum(axis=tuple(i for i in range(3) if i != axis))
        largest = sections.max() if sections.size else 0
        if largest == 0:
            continue
        for end, value in ((0, sections[0]), (1, sections[-1])):
            if value >= fraction * largest:
                out.append(FACES[2 * axis + end])
    return out


def input_findings(case_id: str, brain: np.ndarray | None, acquired: Sequence[str]) -> tuple[dict, list[str]]:
    """Check a case's inputs against what the model was trained on.

    Args:
        case_id: for the messages.
        brain: boolean mask (H, W, D) of the voxels where any contrast is non-zero (None: not known).
        acquired: the contrasts the case has (real, non-constant images).

    Returns:
        ``(sidecar fields, warning lines)``: ``input_warnings`` (short codes) and ``region_confidence``
        (per region: ``"as validated"`` or why it is an estimate); one line per finding.
    """
    codes: list[str] = []
    lines: list[str] = []
    if brain is not None:
        share = background_fraction(brain)
        if share > BACKGROUND_BORDER_FRACTION:
            codes.append("background_not_zero")
            lines.append(
                f"case {case_id}: the background is not zero ({share:.0%} of the border voxels): the scan "
                "looks not skull-stripped; the model expects brain-extracted BraTS-like scans, so expect "
                "oversized tumours: extract the brain first"
            )
        else:
            faces = cut_faces(brain)
            if faces:
                codes.append("brain_touches_fov_edge")
                lines.append(
                    f"case {case_id}: the brain touches the edge of the field of view ({', '.join(faces)}): "
                    "a tumour cut by it is segmented worse; check the scan covers the whole brain"
                )
    have = {canonical(c) for c in acquired}
    confidence = {r: "as validated" for r in REGIONS}
    if "t1c" not in have:
        codes.append("no_t1c")
        for r in T1C_REGIONS:
            confidence[r] = "estimate: no t1c (enhancement is seen on t1c)"
        lines.append(
            f"case {case_id}: no t1c: {' and '.join(T1C_REGIONS)} are estimates (enhancement is seen on "
            "post-contrast T1); WT is not affected"
        )
    return {"input_warnings": codes, "region_confidence": confidence}, lines
