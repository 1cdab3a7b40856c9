"""The names of the training runs the bundle defines: staged schedule, ablations, other tasks."""

from __future__ import annotations

#: The method's staged schedule, in order; each stage starts from the previous stage's best model.
STAGES: tuple[str, ...] = ("pretrain_seg", "pretrain_synth", "heads", "joint")
#: Single-task ablation configs.
ABLATIONS: tuple[str, ...] = ("seg_only", "synth_only")
#: Other runs trained by a config of the same name: local synthesis (see :mod:`medmtl.local_synthesis`,
#: weights in ``models/local_synthesis``) and the full-resolution refinement of a trained coarse model
#: (see :mod:`medmtl.networks.refinement`, weights in ``models``), and the guided synthesis of a
#: trained coarse model (see :mod:`medmtl.networks.guided`, weights in ``models``), and
#: ``few_labels``: segmentation fine-tuning of a ``synth_only`` network pretrained on every study,
#: labelled or not (row d of ``benchmarks/label_scarcity.py``; weights in ``models``).
TASK_CONFIGS: tuple[str, ...] = ("local_synthesis", "refine", "guided", "few_labels")
