"""Input guards (medseg.preprocess.guard): what a bundle records of its training data and what predict refuses."""

from __future__ import annotations

import numpy as np

from medseg.preprocess.guard import check_case, input_guard, looks_like_ct, merge_guards


def _two_cases():
    a = np.zeros((2, 3, 4), np.float32)
    la = np.zeros_like(a, np.uint8)
    a[0, 0, :2] = [10, 20]
    la[0, 0, :2] = 1
    b = np.zeros((4, 3, 2), np.float32)
    lb = np.zeros_like(b, np.uint8)
    b[1, 1, :] = [30, 40]
    lb[1, 1, :] = 2
    return [(a, (1.0, 2.0, 3.0), la), (b, (2.0, 1.0, 1.0), lb)]


def test_input_guard_records_ranges_and_foreground_percentiles():
    g = input_guard(_two_cases(), "MRI")
    assert g["modality"] == "MRI" and g["n_cases"] == 2
    # field of view = shape x spacing: (2, 6, 12) and (8, 3, 2) mm
    assert g["field_of_view_mm"] == {"min": [2.0, 3.0, 2.0], "max": [8.0, 6.0, 12.0]}
    assert g["spacing_mm"] == {"min": [1.0, 1.0, 1.0], "max": [2.0, 2.0, 3.0]}
    # foreground 10, 20, 30, 40: linear percentiles at positions 0.015, 1.5, 2.985 of 0..3
    assert g["foreground_percentiles"] == {"p0.5": 10.15, "p50": 25.0, "p99.5": 39.85}


def _mri_guard():
    return {"modality": "MRI", "foreground_percentiles": {"p0.5": 30.0, "p50": 370.0, "p99.5": 2000.0},
            "spacing_mm": {"min": [1, 1, 1], "max": [1, 1, 1]},
            "field_of_view_mm": {"min": [26, 40, 31], "max": [47, 59, 43]}}


def _ct(shape=(40, 60, 60)):
    a = np.full(shape, -1000.0, np.float32)
    a[:, 10:50, 10:50] = 40.0
    return a


def test_ct_given_to_an_mri_model_is_refused_and_the_fov_named():
    warn, refuse = check_case(_ct(), (3.0, 3.0, 3.0), _mri_guard())
    assert len(refuse) == 2
    assert "look like CT" in refuse[0] and "trained on MRI" in refuse[0]
    # 120 x 180 x 180 mm = 3888 mL vs 47 x 59 x 43 mm = 119.2 mL: 33 times
    assert "120 x 180 x 180 mm" in refuse[1] and "33 times" in refuse[1]
    assert any("spacing 3 x 3 x 3 mm" in w for w in warn)


def test_a_case_like_the_training_data_passes_and_unusual_ones_only_warn():
    rng = np.random.default_rng(0)
    mri = rng.uniform(0, 800, size=(36, 50, 35)).astype(np.float32)
    assert check_case(mri, (1.0, 1.0, 1.0), _mri_guard()) == ([], [])
    # one axis 2.6x the largest training extent (120 mm > 2 x 47), volume 1.8x: a warning, not a refusal
    warn, refuse = check_case(rng.uniform(0, 800, size=(120, 50, 35)), (1.0, 1.0, 1.0), _mri_guard())
    assert refuse == [] and len(warn) == 1 and "field of view 120 x 50 x 35 mm" in warn[0]
    # no guard (an older bundle): nothing to say
    assert check_case(_ct(), (3, 3, 3), None) == ([], [])


def test_ct_model_refuses_intensities_outside_its_hu_range_but_takes_ct():
    g = {**_mri_guard(), "modality": "CT", "foreground_percentiles": {"p0.5": -100.0, "p50": 60.0, "p99.5": 250.0},
         "field_of_view_mm": {"min": [100, 300, 300], "max": [400, 500, 500]}}
    assert check_case(_ct(), (3.0, 6.0, 6.0), g)[1] == []          # 120 x 360 x 360 mm of HU: fine
    mri = np.random.default_rng(1).uniform(2000, 9000, size=(40, 60, 60))
    refuse = check_case(mri, (3.0, 6.0, 6.0), g)[1]
    assert len(refuse) == 1 and "wholly outside the CT training foreground" in refuse[0]


def test_looks_like_ct():
    assert looks_like_ct(_ct().ravel())
    assert not looks_like_ct(np.random.default_rng(0).uniform(0, 1000, 5000))      # MR units
    assert not looks_like_ct(np.random.default_rng(0).normal(0, 1, 5000))           # z-scored
    assert not looks_like_ct(np.full(100, -5000.0))                                  # below CT's padding


def test_merge_guards_widens_the_ranges():
    a = {"modality": "MRI", "n_cases": 3, "foreground_percentiles": {"p0.5": 10, "p50": 20, "p99.5": 30},
         "spacing_mm": {"min": [1, 1, 1], "max": [2, 2, 2]}, "field_of_view_mm": {"min": [5, 5, 5], "max": [9, 9, 9]}}
    b = {"modality": "MRI", "n_cases": 4, "foreground_percentiles": {"p0.5": 5, "p50": 30, "p99.5": 25},
         "spacing_mm": {"min": [0.5, 1, 1], "max": [2, 3, 2]},
         "field_of_view_mm": {"min": [6, 4, 5], "max": [9, 9, 12]}}
    m = merge_guards([a, b])
    assert m["spacing_mm"] == {"min": [0.5, 1.0, 1.0], "max": [2.0, 3.0, 2.0]}
    assert m["field_of_view_mm"] == {"min": [5.0, 4.0, 5.0], "max": [9.0, 9.0, 12.0]}
    assert m["foreground_percentiles"] == {"p0.5": 5, "p50": 25.0, "p99.5": 30}
    assert m["n_cases"] == 4
