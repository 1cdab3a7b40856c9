"""MONAI bundles shipped with medmtl (installed as ``medmtl.bundles``): ``brats_mtl`` and its schemas."""
