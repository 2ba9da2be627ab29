"""GAN dissection (Bau et al. 2019): which units of a generator layer stand for which objects, and
what happens when they are switched off and on.

    stage.py      the dissect stage: plans items, runs the passes and interventions on Ray actors,
                  merges with Dask, writes dissect/{generator}/ (each array explained there), records
    worker.py     DissectWorker: one generator, the segmenter and the probe; chunk partials, interventions
    stats.py      unit statistics as mergeable partials: ranges, histograms, contingency -> IoU, IQR
    intervene.py  hooks on named layers: featuremaps, ablation/insertion, their effects
    plan.py       generators, candidate thresholds, the units switched and shown, the results table
    artifacts.py  the artifact units' seeds, ranking and table
    figures.py    the report section, from the store alone
    upernet.py    the old plugin name of ganscale.models.upernet

Everything but stage.py is a library: it imports no stage (tests/test_stages.py checks it)."""
