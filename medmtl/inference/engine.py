"""The parts of the bundle's inference engine: flip TTA, the prediction splitter, cohort progress.

``configs/inference.json`` names them (``medmtl.inference.engine.FlipTTAInferer``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.inferers import SlidingWindowInferer
from monai.transforms import MapTransform


class SplitPredictiond(MapTransform):
    """Move the network's dict output ``pred = {"seg", "synth"}`` to top-level keys for inversion.

    Args:
        keys: the prediction key (``pred``).
        allow_missing_keys: don't raise for absent keys.
    """

    def __init__(self, keys: KeysCollection = "pred", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d.pop(key)
            if not isinstance(pred, Mapping):
                raise TypeError(
                    f"expected a dict prediction with 'seg' and 'synth', got {type(pred).__name__}"
                )
            for name, value in pred.items():
                d[name] = value
        return d


class FlipTTAInferer(SlidingWindowInferer):
    """Sliding-window inference averaged over the identity and flips along each spatial axis.

    Flip test-time augmentation is the usual cheap gain in BraTS (e.g. Isensee et al., nnU-Net,
    Nat. Methods 2021); each flip costs one more full pass.

    Args:
        flip_axes: spatial axes to flip (0-based, not counting batch and channel).
        kwargs: passed to :class:`monai.inferers.SlidingWindowInferer`.
    """

    def __init__(self, flip_axes: Sequence[int] = (0, 1, 2), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flip_axes = list(flip_axes)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        total = super().__call__(inputs, network, *args, **kwargs)
        for axis in self.flip_axes:
            dims = [axis + 2]
            out = super().__call__(torch.flip(inputs, dims), network, *args, **kwargs)
            total = {k: total[k] + torch.flip(out[k], dims) for k in total}
        n = 1 + len(self.flip_axes)
        return {k: v / n for k, v in total.items()}


class CaseProgress:
    """A per-case progress bar with an ETA (tqdm) and a closing summary for cohort inference.

    An ignite handler for the inference evaluator: one tick per case, the case id beside the bar,
    then one line saying how many cases were written and where.

    Args:
        total: number of cases to run.
        out_dir: the output folder, named in the summary.
        disable: no bar: one line per case on stdout instead (what a log file wants); None shows the
            bar only when stderr is a terminal.
    """

    def __init__(self, total: int, out_dir: str | os.PathLike, disable: bool | None = None) -> None:
        import sys
        import time

        self.total, self.out_dir = int(total), Path(out_dir)
        self.disable = disable if disable is not None else not sys.stderr.isatty()
        self.bar: Any = None
        self.done = 0
        self._clock = time.perf_counter
        self._t0 = self._clock()

    def attach(self, engine: Any) -> None:
        """Register with an ignite engine."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._tick)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _start(self, engine: Any) -> None:
        from tqdm.auto import tqdm

        self.done = 0
        self._t0 = self._clock()
        if not self.disable:
            self.bar = tqdm(total=self.total, unit="case", desc="medmtl infer")

    def _tick(self, engine: Any) -> None:
        self.done += 1
        out = engine.state.output
        first = out[0] if isinstance(out, list) and out else out
        case = first.get("written", {}).get("sidecar", "") if isinstance(first, Mapping) else ""
        name = Path(str(case)).stem if case else ""
        if self.bar is not None:
            self.bar.set_postfix_str(name)
            self.bar.update(1)
        else:
            elapsed = self._clock() - self._t0
            eta = elapsed / self.done * (self.total - self.done)
            print(
                f"  case {self.done}/{self.total} {name}: {elapsed:.0f} s, about {eta:.0f} s left", flush=True
            )

    def _finish(self, engine: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        print(f"medmtl infer: {self.done} of {self.total} case(s) written to {self.out_dir}", flush=True)
