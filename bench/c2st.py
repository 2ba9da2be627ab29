"""The demo's C2ST alone (as metrics.stage.c2st_task trains it), with its epoch histories and time.

    python bench/c2st.py DIR/demo.yaml [EPOCHS] [PATIENCE]
"""
import sys
import time

import numpy as np

from ganscale import schema, sources
from ganscale.metrics.c2st import c2st
from ganscale.models import registry
from ganscale.images import images_by_id
from ganscale.study import load_study

study = load_study(sys.argv[1])
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else study.metrics.c2st.epochs
patience = int(sys.argv[3]) if len(sys.argv) > 3 else study.metrics.c2st.patience
root = schema.open_store(study.store, study.storage_options, mode="r")
size = 2 ** int(np.log2(registry.probe_entry(study.probe.name).input_size))
images = {name: sources.resize_square(images_by_id(study, root, name, np.arange(study.metrics.c2st.samples)), size)
          for name in study.datasets}
t = time.time()
result = c2st(images["real"], {g: images[g] for g in ("full", "no_tree")}, epochs=epochs, patience=patience,
              seed=study.seed)
print(f"c2st: {time.time() - t:.1f} s")
for name, run in result.classifiers.items():
    print(name, f"test {run.test_accuracy:.3f}", f"epochs {run.epochs} best {run.best_epoch} {run.seconds:.1f} s",
          [round(h["validation_accuracy"], 3) for h in run.history])
