"""The one table of MRI contrast names.

BraTS releases, UPENN-GBM and the Medical Segmentation Decathlon each spell the four structural
contrasts differently. Everything in medmtl speaks the BraTS 2023 names (``t1n, t1c, t2w, t2f``,
in that channel order); this module is the only place that knows the other spellings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: Canonical contrast names in canonical channel order.
CONTRASTS: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")

#: Human-readable description of each canonical contrast.
DESCRIPTIONS: dict[str, str] = {
    "t1n": "T1-weighted, native (pre-contrast)",
    "t1c": "T1-weighted, post-contrast (gadolinium)",
    "t2w": "T2-weighted",
    "t2f": "T2-FLAIR",
}

#: Every known spelling (lower case) -> canonical name.
ALIASES: dict[str, str] = {
    "t1n": "t1n", "t1": "t1n", "t1w": "t1n", "native": "t1n",
    "t1c": "t1c", "t1ce": "t1c", "t1gd": "t1c", "t1post": "t1c", "t1-gd": "t1c",
    "t2w": "t2w", "t2": "t2w",
    "fla": "t2f",  # FLAIR as scanner series names abbreviate it (e.g. Siemens "..._tir2d1_21_fla")
    "t2f": "t2f", "flair": "t2f", "t2flair": "t2f", "t2-flair": "t2f",
    # BIDS: the anatomical suffixes T1w / T2w / FLAIR, and a contrast agent as the ce- entity
    # (sub-01_ce-gadolinium_T1w is post-contrast T1, sub-01_T1w native T1).
    "ce-gadolinium_t1w": "t1c", "ce-gd_t1w": "t1c", "ce-gadolinium-t1w": "t1c", "ce-gd-t1w": "t1c",
}  # fmt: skip

#: Spellings, exactly as BIDS writes them, that only BIDS uses (BraTS 2023 writes ``t2w`` in lower
#: case): a case whose files use one is named the BIDS way.
BIDS_SPELLINGS: frozenset[str] = frozenset({"T1w", "T2w", "ce-gadolinium_T1w", "ce-gd_T1w"})


def canonical(name: str) -> str:
    """Return the canonical contrast name for any known spelling.

    Args:
        name: a contrast name as found in a file name or a config (case-insensitive),
            e.g. ``"T1GD"``, ``"flair"``, ``"t1ce"``.

    Returns:
        One of :data:`CONTRASTS`.

    Raises:
        ValueError: if the name is not a known spelling.
    """
    key = name.strip().lower()
    if key not in ALIASES:
        raise ValueError(
            f"unknown MRI contrast {name!r}; expected one of {sorted(set(ALIASES))} "
            f"(canonical: {list(CONTRASTS)})"
        )
    return ALIASES[key]


def canonical_list(names: Iterable[str]) -> list[str]:
    """Canonicalise a list of contrast names, keeping their order and refusing duplicates.

    Args:
        names: contrast names in any known spelling.

    Returns:
        The canonical names, in the given order.

    Raises:
        ValueError: on an unknown name or when two names denote the same contrast.
    """
    out = [canonical(n) for n in names]
    if len(set(out)) != len(out):
        raise ValueError(f"contrast list {list(names)} names the same contrast twice")
    return out


def channel_indices(names: Sequence[str], order: Sequence[str] = CONTRASTS) -> list[int]:
    """Indices of ``names`` in a channel ``order`` (canonical order by default).

    Args:
        names: the contrasts wanted, any spelling.
        order: the channel order of the array they are taken from.

    Returns:
        Channel indices, one per name.
    """
    order_c = canonical_list(order)
    return [order_c.index(canonical(n)) for n in names]
