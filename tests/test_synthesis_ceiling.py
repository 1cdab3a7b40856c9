"""The local linear fit behind the synthesis ceilings: known affine relations are recovered."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import synthesis_ceiling  # noqa: E402


def _volumes(seed: int = 0, size: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    guides = torch.randn(1, 3, size, size, size, generator=g)
    mask = torch.zeros(1, 1, size, size, size)
    mask[..., 2:-2, 2:-2, 2:-2] = 1
    return guides, mask


def test_a_constant_affine_relation_is_recovered_inside_the_mask():
    guides, mask = _volumes()
    target = 2.0 * guides[:, :1] - 0.5 * guides[:, 2:3] + 3.0
    fitted = synthesis_ceiling.local_linear_fit(target, guides, mask, sigma=3.0, eps=1e-6)
    inside = mask.bool()
    assert torch.allclose(fitted[inside], target[inside], atol=1e-3)


def test_the_coefficients_of_a_constant_affine_relation_are_its_weights():
    guides, mask = _volumes(3)
    target = 2.0 * guides[:, :1] - 0.5 * guides[:, 2:3] + 3.0
    a, b = synthesis_ceiling.local_linear_coefficients(target, guides, mask, sigma=3.0, eps=1e-6)
    inside = mask[0, 0].bool()
    for c, want in enumerate((2.0, 0.0, -0.5)):
        assert torch.allclose(a[0, c][inside], torch.full_like(a[0, c][inside], want), atol=1e-3)
    assert torch.allclose(b[0, 0][inside], torch.full_like(b[0, 0][inside], 3.0), atol=1e-3)


def test_coefficients_that_change_in_space_are_tracked_better_by_smaller_windows():
    guides, mask = _volumes(1)
    slope = torch.ones_like(mask)
    slope[..., 10:] = -1.0  # the relation flips sign halfway along the last axis
    target = slope * guides[:, 1:2]
    inside = mask.bool()
    fit = synthesis_ceiling.local_linear_fit
    fits = [fit(target, guides, mask, sigma=s, eps=1e-6) for s in (1.0, 2.0, 4.0)]
    errors = [(f - target)[inside].abs().mean() for f in fits]
    assert errors[0] < errors[1] < errors[2]
    assert errors[0] < 0.5 * target[inside].abs().mean()


def test_coefficients_fitted_on_blurred_guides_carry_the_sharp_guides_detail():
    guides, mask = _volumes(2)
    smooth = synthesis_ceiling._masked_blur(guides, mask, 1.5)
    target = smooth[:, :1] * 1.5 + smooth[:, 1:2]  # a smooth synthesis of 1.5 g0 + g1
    fitted = synthesis_ceiling.local_linear_fit(target, guides, mask, sigma=4.0, eps=1e-6, fit_guides=smooth)
    sharp = 1.5 * guides[:, :1] + guides[:, 1:2]
    inside = mask.bool()
    assert torch.allclose(fitted[inside], sharp[inside], atol=1e-2)
    # fitted on the sharp guides instead, the smooth target's coefficients shrink towards 0
    shrunk = synthesis_ceiling.local_linear_fit(target, guides, mask, sigma=4.0, eps=1e-6)
    assert (shrunk - sharp)[inside].abs().mean() > 5 * (fitted - sharp)[inside].abs().mean()


def _brain_pair(seed: int = 3, size: int = 24):
    import numpy as np
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    ref = gaussian_filter(rng.normal(size=(size,) * 3), 1.5) + 5.0
    brain = np.zeros(ref.shape, bool)
    brain[3:-3, 3:-3, 3:-3] = True
    return ref * brain, brain


def test_the_three_ssim_terms_multiply_to_scikit_images_ssim_map():
    import numpy as np
    from scipy.ndimage import gaussian_filter
    from skimage.metrics import structural_similarity

    from medmtl.metrics import normalise_intensity

    ref, brain = _brain_pair()
    rng = np.random.default_rng(4)
    pred = (ref + gaussian_filter(rng.normal(size=ref.shape), 1.0) * 0.3) * brain
    x, y = normalise_intensity(pred, brain), normalise_intensity(ref, brain)
    maps = synthesis_ceiling.ssim_component_maps(x, y)
    product = maps["luminance"] * maps["contrast"] * maps["structure"]
    np.testing.assert_allclose(product, structural_similarity(x, y, data_range=1.0, full=True)[1], atol=1e-9)
    identical = synthesis_ceiling.ssim_components(ref, ref, brain)
    assert all(abs(v - 1.0) < 1e-9 for v in identical.values())


def test_scaled_local_detail_lowers_contrast_only_and_someone_elses_detail_lowers_structure():
    import numpy as np
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(5)
    pattern, other = (gaussian_filter(rng.normal(size=(24,) * 3), 1.0) for _ in range(2))
    pattern, other = pattern / pattern.std(), other / other.std()
    ref = 0.5 + 0.1 * pattern
    maps = synthesis_ceiling.ssim_component_maps(0.5 + 0.03 * pattern, ref)  # same detail, 30 % of it
    assert np.allclose(maps["structure"], 1.0, atol=1e-6)
    assert maps["contrast"].mean() < 0.9 and maps["luminance"].min() > 0.98
    maps = synthesis_ceiling.ssim_component_maps(0.5 + 0.1 * other, ref)  # right amount, wrong places
    assert abs(maps["structure"].mean()) < 0.15 and maps["contrast"].mean() > 0.9


def test_blend_rows_run_from_the_synthesis_to_the_copy(tmp_path):
    import nibabel as nib
    import numpy as np
    from scipy.ndimage import gaussian_filter

    from medmtl.io import output_paths

    rng = np.random.default_rng(6)
    brain = np.zeros((24, 24, 24), bool)
    brain[3:-3, 3:-3, 3:-3] = True
    entry = {"case_id": "case"}
    for c in ("t1n", "t1c", "t2w", "t2f"):
        img = (gaussian_filter(rng.normal(size=brain.shape), 1.5) + 5.0) * brain
        entry[c] = str(tmp_path / f"{c}.nii.gz")
        nib.save(nib.Nifti1Image(img.astype(np.float32), np.eye(4)), entry[c])
    pred = tmp_path / "pred"
    pred.mkdir()
    synth = (gaussian_filter(rng.normal(size=brain.shape), 2.0) * 40 + 300) * brain  # another scale
    nib.save(nib.Nifti1Image(synth.astype(np.float32), np.eye(4)), output_paths(pred, "case", ["t1c"])["t1c"])
    rows = synthesis_ceiling.case_rows(
        entry, "t1c", pred, blurs=[], fits=[], components=False, blends=[0.0, 0.5, 1.0]
    )
    assert abs(rows["synthesis + copy 0"]["SSIM"] - rows["synthesis"]["SSIM"]) < 1e-6
    # the copy's own intensities and its z-scores score alike: the scorer rescales each image
    assert abs(rows["synthesis + copy 1"]["SSIM"] - rows["copy"]["SSIM"]) < 1e-4
    half = rows["synthesis + copy 0.5"]["SSIM"]
    assert half not in (rows["synthesis"]["SSIM"], rows["copy"]["SSIM"])
