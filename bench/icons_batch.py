"""Seconds per icon of IconRenderer.render at several batch sizes (same process, same cells).

    python bench/icons_batch.py DIR/demo.yaml LAYER
"""
import sys
import time

import numpy as np

from ganscale import schema
from ganscale.icons import IconRenderer
from ganscale.study import load_study

study = load_study(sys.argv[1])
layer = sys.argv[2]
root = schema.open_store(study.store, study.storage_options, mode="r")
x = root[f"datasets/real/layers/{layer}/activations"][:512]
renderer = IconRenderer(study, threads=1)
renderer.render(layer, x[:4], None, 0)  # warm-up
for batch in (32, 128, 32, 128):
    t = time.time()
    renderer.render(layer, x[:batch], None, 0)
    print(f"batch {batch}: {(time.time() - t) / batch * 1000:.1f} ms/icon", flush=True)
