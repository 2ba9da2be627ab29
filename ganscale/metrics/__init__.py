"""Metrics for comparing image generators: pure functions of arrays, usable on your own features.

    from ganscale.metrics import frechet_distance, kid, inception_score, prdc
    fid = frechet_distance(real_pool3, fake_pool3)
    kid_mean, kid_std = kid(real_pool3, fake_pool3)

Feature metrics (`ganscale.metrics.features`): numpy arrays [N, D] (or torch tensors) in, python
floats out, float64 inside. `FeatureMoments` are the mergeable per-chunk partial results behind the
Fréchet distance. Image metrics (`ganscale.metrics.images`): images [B, 3, H, W] in [0, 1].

The pipeline's metrics stage (`ganscale.metrics.stage`) computes them from the store with
mergeable partial results; `ganscale.metrics.c2st` is the classifier two-sample test.
"""

from ganscale.metrics.features import (FeatureMoments, frechet_distance, frechet_distance_from_moments,
                                       frechet_distance_from_stats, inception_score, kid, nearest_neighbours,
                                       polynomial_mmd, prdc)
from ganscale.metrics.images import (colour_histograms, colour_spikes, histogram_kl, images_with_bin, ms_ssim,
                                     ms_ssim_diversity, sharpness)

__all__ = ["FeatureMoments", "frechet_distance", "frechet_distance_from_moments", "frechet_distance_from_stats",
           "inception_score", "kid", "nearest_neighbours", "polynomial_mmd", "prdc", "colour_histograms",
           "colour_spikes", "histogram_kl", "images_with_bin", "ms_ssim", "ms_ssim_diversity", "sharpness"]
