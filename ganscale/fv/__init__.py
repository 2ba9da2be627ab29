"""Feature visualisation in small composable pieces, as lucent does: an image parameterisation
(`param`), random transforms (`transforms`), objectives over a layer's activations (`objectives`)
and an optimisation loop (`render`). Everything is batched: B images optimised together, one
objective value per image, so the icons of B atlas cells render in one pass.

    image = param.fourier_image(batch=4, size=64)
    objective = objectives.direction_cosine("mixed4c", vectors, power=4)
    result = render.render(probe.module, ["mixed4c"], image, objective, transforms.standard(size=64))
"""

from ganscale.fv import objectives, param, render, transforms

__all__ = ["objectives", "param", "render", "transforms"]
