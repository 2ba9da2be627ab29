"""Feature-visualisation pieces: the Fourier parameterisation round-trips, transforms keep shape and
range, the atlas objective peaks at its direction, and a render raises its objective."""

import pytest
import torch

from ganscale.fv import objectives, param, render, transforms
from ganscale.models import registry
from ganscale.study import ProbeSpec


def test_fourier_parameterisation_round_trips_and_stays_in_range():
    images = torch.rand(3, 3, 24, 32, generator=torch.Generator().manual_seed(0)) * 0.98 + 0.01
    p = param.FourierImage(3, 24, 32).set_image(images)
    torch.testing.assert_close(p(), images, atol=1e-5, rtol=0)
    random = param.fourier_image(4, 32, sd=1.0)()
    assert random.shape == (4, 3, 32, 32) and 0 <= random.min() and random.max() <= 1
    # colour decorrelation is an invertible linear map
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(param.decorrelate_colours(param.correlate_colours(x)), x, atol=1e-5, rtol=0)


def test_low_frequencies_get_larger_scale():
    scale = param.spectrum_scale(32, 32)
    assert scale[0, 1] > scale[4, 4] > scale[16, 16]


@pytest.mark.parametrize("transform", [transforms.pad(4), transforms.jitter(3), transforms.random_scale([0.9, 1.1]),
                                       transforms.random_rotate([-10, 10]), transforms.standard(32)])
def test_transforms_keep_shape_and_value_range(transform):
    x = torch.rand(2, 3, 32, 32)
    out = transform(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    again = transform(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_pad_fills_the_border_and_jitter_shifts():
    x = torch.zeros(1, 1, 16, 16)
    padded = transforms.pad(2)(x, torch.Generator())
    assert padded[0, 0, 0, 0] == pytest.approx(0.5) and padded[0, 0, 8, 8] == pytest.approx(0.0)
    ramp = torch.arange(16.0).repeat(1, 1, 16, 1)
    shifted = transforms.jitter(2)(ramp, torch.Generator().manual_seed(3))
    assert torch.equal(shifted[..., 4:12] - ramp[..., 4:12], torch.full_like(ramp[..., 4:12], shifted[0, 0, 0, 8] - 8))


def test_direction_cosine_is_largest_at_its_direction():
    torch.manual_seed(0)
    v = torch.randn(1, 16)
    objective = objectives.direction_cosine("l", v, power=4)
    values = {}
    for name, h in {"same": v, "scaled_down": 0.5 * v, "random": torch.randn(1, 16), "opposite": -v}.items():
        acts = h.view(1, 16, 1, 1).expand(1, 16, 3, 3).contiguous()
        values[name] = float(objective({"l": acts}))
    assert values["same"] > values["scaled_down"] > values["random"] > values["opposite"]
    # among unit-norm activations, the direction itself maximises it
    others = torch.nn.functional.normalize(torch.randn(200, 16), dim=1) * v.norm()
    acts = others.view(200, 16, 1, 1)
    assert (objectives.direction_cosine("l", v.expand(200, 16), power=4)({"l": acts}) < values["same"]).all()
    # whitening with the identity changes nothing
    plain = objectives.direction_cosine("l", v, whiten=torch.eye(16))({"l": v.view(1, 16, 1, 1)})
    assert float(plain) == pytest.approx(values["same"])


def test_render_raises_its_objective_on_the_toy_probe():
    probe = registry.build_probe(ProbeSpec(name="toy_probe"))
    tap = render.LayerTap(probe.module, ["block2"])
    with torch.no_grad():
        acts = tap(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))["block2"]
    vectors = acts[:, :, 4, 4][:2] + 0.1
    objective = objectives.direction_cosine("block2", vectors, power=2)
    result = render.render(tap, lambda seed: param.fourier_image(2, 32, seed=seed), objective,
                           transforms.standard(32), steps=30, lr=0.05, tries=2, input_size=32)
    assert result.images.shape == (2, 3, 32, 32)
    assert (result.objective > result.start_objective).all()
    assert (result.objective > 0).all()
