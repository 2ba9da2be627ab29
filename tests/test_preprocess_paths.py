"""One image path: with `preprocess` set, the checkpoint sweep and dissection's artifact comparison
see the same pixels as the sample stage did (issue 19, item 4): the features they compute for a
dataset's own seeds equal the features stored for them."""

from __future__ import annotations

import numpy as np

from conftest import toy_study
from ganscale.pipeline import run_stage
from ganscale import sample, schema, sources
from ganscale.models import registry
from ganscale.study import load_study


def test_sweep_and_dissect_see_the_pixels_sample_measured(ray_local, tmp_path):
    from ganscale.dissect.worker import DissectWorker
    from ganscale.metrics.stage import generated_features

    study = load_study(toy_study(tmp_path, layers=["block2", "block3"], preprocess={"grayscale": True, "size": 16},
                                 datasets={"full": {"kind": "generator", "name": "dcgan",
                                                    "weights": "builtin:dcgan_full.pt", "samples": 48}},
                                 sample={"chunk_size": 48, "batch_size": 16},
                                 dissect={"layers": ["layer2"], "samples": 20, "chunk_size": 10,
                                          "artifact_samples": 0, "intervention_samples": 4}))
    run_stage(study, "sample", workers=1)
    group = schema.open_store(study.store, mode="r")["datasets/full"]
    stored = schema.read_rows(group, "layers/block3/pooled")
    seeds = sources.dataset_seeds(study.seed, "full", 48)[:12]
    generator = registry.build_generator(study.datasets["full"], "datasets.full")
    probe = registry.build_probe(study.probe).only(["block3"])

    images, sweep_feats, _ = generated_features(study, generator, seeds, probe, "block3", "test")
    assert images.shape[-1] == 16 and bool((images[:, 0] == images[:, 1]).all())  # grey, 16 px: preprocessed
    np.testing.assert_allclose(sweep_feats, stored[:12], rtol=1e-4, atol=1e-5)

    worker = DissectWorker(study, "full")
    worker.ready()
    raw, _ = generator.generate(seeds.tolist())  # what the artifact comparison hands over: raw generator images
    np.testing.assert_allclose(worker._probe_features(raw), stored[:12], rtol=1e-4, atol=1e-5)
    # and without the preprocessing the features would differ: the test can tell
    assert not np.allclose(probe(sources.resize_square(raw, probe.input_size))[0]["block3"].mean((2, 3)).numpy(),
                           stored[:12], atol=1e-3)
