"""Feature visualisation in small composable pieces, as lucent does: an image parameterisation
(`param`: Fourier coefficients, decorrelated colour, sigmoid), random transforms (`transforms`: pad,
jitter, random scale, random rotate), objectives over a layer's activations (`objectives`, among
them the activation atlas's direction x cosine^n with optional whitening) and an optimisation loop
(`render`: Adam, steps, best of several tries). Everything is batched: B images optimised together,
one objective value per image, so the icons of B atlas cells render in one pass.

    tap = render.LayerTap(probe.module, ["mixed4c"])
    objective = objectives.direction_cosine("mixed4c", vectors, power=4)          # vectors [B, C]
    result = render.render(tap, objective, lambda seed: param.fourier_image(len(vectors), 224, seed=seed),
                           transforms.standard(224), steps=256, lr=0.05, tries=2)
    result.images, result.objective                                                # [B, 3, 224, 224], [B]
"""

from ganscale.fv import objectives, param, render, transforms

__all__ = ["objectives", "param", "render", "transforms"]
