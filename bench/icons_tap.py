"""Icons with the probe stopped at the tapped layer vs the full forward pass: identical outputs, time of each.

    python bench/icons_tap.py DIR/demo.yaml
"""
import sys
import time
import numpy as np, torch
from ganscale import schema
from ganscale.icons import IconRenderer
from ganscale.fv.render import LayerTap
from ganscale.study import load_study
study = load_study(sys.argv[1])
root = schema.open_store(study.store, study.storage_options, mode="r")
r = IconRenderer(study, threads=1)
for layer in ("block1", "block2", "block3"):
    x = root[f"datasets/real/layers/{layer}/activations"][:32]
    r._taps.clear(); r.render(layer, x[:2], None, 0)
    new_icons, new_vals = r.render(layer, x, None, 0)
    t = time.time(); r.render(layer, x, None, 0); t_new = time.time() - t
    r._taps[layer] = LayerTap(r.probe.module, [layer])
    old_icons, old_vals = r.render(layer, x, None, 0)
    t = time.time(); r.render(layer, x, None, 0); t_old = time.time() - t
    print(layer, "identical:", np.array_equal(new_icons, old_icons), np.array_equal(new_vals, old_vals),
          f"full forward {t_old:.1f} s, stopping {t_new:.1f} s, ratio {t_new / t_old:.2f}", flush=True)
