"""The demo figure's uncertainty and notes, on small synthetic colours (the full run is slow)."""

import numpy as np
import torch

from platonic_fast.demo import report, study


def test_mutual_knn_uncertainty_separates_aligned_from_shuffled():
    g = np.random.default_rng(0)
    coords = g.standard_normal((150, 3))
    aligned = torch.nn.functional.normalize(torch.from_numpy(np.c_[coords, 0.3 * g.standard_normal((150, 5))]).float(),
                                            dim=1)
    u = study.mutual_knn_uncertainty(aligned, coords, 5, seed=0, permutations=49, subsamples=8)
    assert u["p_value"] == 1 / 50 and u["calibrated"] > 0.2 and u["half_n"] == 75
    lo, hi = u["half_interval"]
    assert lo <= hi and abs(u["chance"] - 5 / 149) < 0.02
    shuffled = aligned[torch.from_numpy(g.permutation(150))]
    v = study.mutual_knn_uncertainty(shuffled, coords, 5, seed=0, permutations=49, subsamples=0)
    assert v["calibrated"] == 0 and "half_interval" not in v


def test_notes_explain_the_vision_representation_and_the_layouts():
    reps = {"cielab": {"_x": np.zeros((949, 3))},
            "minilm": {"uncertainty": {"permutations": 200, "half_subsamples": 20, "half_interval": [0.17, 0.2]}},
            "minilm_random_weights": {"uncertainty": {"permutations": 200, "half_subsamples": 20,
                                                      "half_interval": [0.13, 0.15]}}}
    info = {"max_pixel_distance": 4.0, "photographs": ["a", "b"], "grid_levels_per_channel": 8, "eigenvectors": 103,
            "fallback_colours": 540, "min_cell_count": 10, "distinct_representations": 150}
    text = report.notes(reps, info)
    assert "540 of 949 colours" in text and "150 distinct vision vectors" in text
    assert "pointwise-mutual-information" in text and "shrink" in text and "do not overlap" in text
