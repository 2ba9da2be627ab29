"""Feature-visualisation pieces (ganscale.fv): the Fourier parameterisation round-trips, transforms
keep shape and value range, the atlas objective is largest at its target direction, and a render
raises its objective, icon by icon, in one batch (on the toy probe: no downloads, a few seconds)."""

import pytest
import torch

from ganscale.fv import objectives, param, render, transforms
from ganscale.models import registry
from ganscale.study import ProbeSpec
from ganscale.toyworld.scenes import render_batch


@pytest.fixture(scope="module")
def toy():
    """The toy probe tapped at block3, and the mean centre activation of each object class."""
    probe = registry.build_probe(ProbeSpec(name="toy_probe")).only([])
    tap = render.LayerTap(probe.module, ["block3"])
    images, _, labels = render_batch(range(120))
    with torch.no_grad():
        centre = tap(images)["block3"][:, :, 2, 2]
    targets = torch.stack([centre[labels == k].mean(0) for k in range(4)])
    return tap, targets


# ---- parameterisation ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(24, 32), (17, 17), (32, 21)])
def test_fourier_parameterisation_round_trips(shape):
    h, w = shape
    images = torch.rand(3, 3, h, w, generator=torch.Generator().manual_seed(0)) * 0.98 + 0.01
    p = param.FourierImage(3, h, w).set_image(images)
    torch.testing.assert_close(p(), images, atol=1e-5, rtol=0)
    # image -> coefficients -> image -> coefficients: the coefficients of a real image are a fixed point
    again = param.image_to_coefficients(p().detach())
    torch.testing.assert_close(again, p.coefficients.detach(), atol=2e-3, rtol=1e-3)
    plain = param.FourierImage(3, h, w, decorrelate=False).set_image(images)
    torch.testing.assert_close(plain(), images, atol=1e-5, rtol=0)


def test_colour_decorrelation_is_lucents_normalised_matrix_and_invertible():
    columns = param.COLOR_CORRELATION.norm(dim=0)
    assert columns.max() == pytest.approx(1.0)
    assert param.COLOR_CORRELATION[0, 0] == pytest.approx(0.26 / (0.26 ** 2 + 2 * 0.27 ** 2) ** 0.5)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(param.decorrelate_colours(param.correlate_colours(x)), x)
    # a unit change of the first decorrelated channel is a (nearly) grey change of RGB
    grey = param.correlate_colours(torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)).flatten()
    assert grey.std() < 0.05 * grey.mean()


def test_random_images_are_in_range_and_low_frequencies_dominate():
    images = param.fourier_image(4, 32, sd=1.0, seed=3)()
    assert images.shape == (4, 3, 32, 32) and 0 < images.min() and images.max() < 1
    scale = param.spectrum_scale(32, 32)
    assert scale[0, 0] == scale[0, 1] == pytest.approx(32) and scale[0, 1] > scale[4, 4] > scale[16, 16]
    # 1/|f| and the orthonormal FFT (1/N): k cycles per image move the pixels alike at any image size
    assert param.spectrum_scale(64, 64)[0, 3] / 64 == pytest.approx(param.spectrum_scale(32, 32)[0, 3] / 32)
    # neighbouring pixels of a random image correlate: most energy in low frequencies
    x = param.fourier_image(8, 64, sd=1.0).logits().detach()
    assert torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1] > 0.5


# ---- transforms ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,transform", [
    ("pad", transforms.pad(4)), ("jitter", transforms.jitter(3)), ("scale", transforms.random_scale([0.8, 1.25])),
    ("rotate", transforms.random_rotate([-30, 30])), ("standard", transforms.standard(32)),
    ("standard_224", transforms.standard(224))])
def test_transforms_keep_shape_and_value_range(name, transform):
    side = 224 if name == "standard_224" else 32
    x = torch.rand(6, 3, side, side + (0 if name == "standard_224" else 8), generator=torch.Generator().manual_seed(0))
    out = transform(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    assert torch.equal(out, transform(x, torch.Generator().manual_seed(1)))  # reproducible from the generator
    constant = torch.full_like(x, 0.5)
    torch.testing.assert_close(transform(constant, torch.Generator()), constant)  # a flat image stays flat


def test_pad_fills_the_border_and_jitter_shifts_each_image_by_whole_pixels():
    x = torch.zeros(1, 1, 16, 16)
    padded = transforms.pad(2)(x, torch.Generator())
    assert padded[0, 0, 0, 0] == pytest.approx(0.5) and padded[0, 0, 8, 8] == pytest.approx(0.0)
    ramp = torch.arange(16.0).repeat(8, 1, 16, 1)  # value = x coordinate
    shifted = transforms.jitter(6)(ramp, torch.Generator().manual_seed(3))
    inner = shifted[..., 4:12] - ramp[..., 4:12]
    offsets = inner[:, 0, 0, 0]
    assert torch.equal(inner, offsets.view(-1, 1, 1, 1).expand_as(inner))  # a pure integer shift, no blur
    assert offsets.abs().max() <= 3 and len(offsets.unique()) > 1  # per image, within the range


def test_scale_and_rotate_draw_per_image_and_are_exact_at_identity():
    x = torch.rand(16, 3, 20, 20)
    torch.testing.assert_close(transforms.random_scale([1.0])(x, torch.Generator()), x)
    torch.testing.assert_close(transforms.random_rotate([0])(x, torch.Generator()), x)
    same = x[:1].expand(16, 3, 20, 20)
    rotated = transforms.random_rotate(list(range(-20, 21, 5)))(same, torch.Generator().manual_seed(0))
    assert len({round(float(r.sum()), 3) for r in rotated}) > 2  # different angles for different images
    quarter = transforms.random_rotate([90])(x, torch.Generator())
    torch.testing.assert_close(quarter, torch.rot90(x, 1, (2, 3)), atol=1e-5, rtol=0)


# ---- objectives ----------------------------------------------------------------------------

def _at_centre(h: torch.Tensor, side: int = 3) -> dict:
    """{'l': activations [B, C, side, side]} with h [B, C] at the centre and noise elsewhere."""
    acts = torch.rand(h.shape[0], h.shape[1], side, side)
    acts[:, :, side // 2, side // 2] = h
    return {"l": acts}


def test_direction_cosine_is_largest_at_its_direction():
    torch.manual_seed(0)
    v = torch.randn(16)
    objective = objectives.direction_cosine("l", v, power=4)
    values = {name: float(objective(_at_centre(h[None])))
              for name, h in {"same": v, "half": 0.5 * v, "random": torch.randn(16), "opposite": -v}.items()}
    assert values["same"] > values["half"] > values["random"] > values["opposite"]
    assert values["same"] == pytest.approx(float(v.norm()))  # (h.v/|v|) * 1^4
    # among activations of the same norm, the direction itself is the maximum
    others = torch.nn.functional.normalize(torch.randn(500, 16) + 0.5 * v, dim=1) * v.norm()
    assert (objective(_at_centre(others)) < values["same"]).all()
    # the cosine power sharpens the preference for the direction
    tilted = torch.nn.functional.normalize(v + 0.8 * torch.randn(16), dim=0) * v.norm() * 1.5
    assert objectives.direction_cosine("l", v, power=0)(_at_centre(tilted[None])) > values["same"]
    assert objectives.direction_cosine("l", v, power=4)(_at_centre(tilted[None])) < values["same"]


def test_objectives_are_per_image_and_whitening_moves_the_target():
    torch.manual_seed(1)
    vectors = torch.randn(3, 8)
    objective = objectives.direction_cosine("l", vectors, power=4)
    acts = _at_centre(vectors.clone())
    values = objective(acts)
    assert values.shape == (3,)
    # image b is judged against vectors[b] only: changing image 0 leaves the others' values alone
    acts["l"][0] = 0
    changed = objective(acts)
    assert changed[0] != values[0] and torch.equal(changed[1:], values[1:])
    # whitening by W: the objective peaks at W v, and the identity changes nothing
    a = torch.randn(200, 8) @ torch.randn(8, 8)
    w = objectives.whitening(a.T @ a / 200)
    torch.testing.assert_close(w, w.T)
    whitened = objectives.direction_cosine("l", vectors, power=4, whiten=w)
    target = vectors @ w.T
    assert (whitened(_at_centre(target)) > whitened(_at_centre(vectors))).all()
    plain = objectives.direction_cosine("l", vectors, whiten=torch.eye(8))(_at_centre(vectors))
    torch.testing.assert_close(plain, values)
    # the other objectives, batched
    assert objectives.channel("l", [0, 1, 2])(acts).shape == (3,)
    torch.testing.assert_close(objectives.neuron("l", 2)(_at_centre(vectors)), vectors[:, 2])
    torch.testing.assert_close(objectives.direction("l", vectors)(_at_centre(vectors)), vectors.norm(dim=1))
    torch.testing.assert_close(objectives.cosine("l", vectors)(_at_centre(2 * vectors)), torch.ones(3))


# ---- render --------------------------------------------------------------------------------

def test_a_batched_render_raises_each_icons_objective_towards_its_own_target(toy):
    tap, targets = toy
    objective = objectives.direction_cosine("block3", targets, power=4)
    result = render.render(tap, objective, lambda seed: param.fourier_image(4, 32, seed=seed),
                           transforms.standard(32), steps=30, lr=0.05, input_size=32)
    assert result.images.shape == (4, 3, 32, 32) and 0 <= result.images.min() and result.images.max() <= 1
    assert (result.objective > result.start_objective + 1).all()
    with torch.no_grad():
        reached = tap(result.images)["block3"][:, :, 2, 2]
    cos = torch.nn.functional.cosine_similarity(reached[:, None], targets[None], dim=2)  # [icon, target]
    assert (cos.diagonal() > 0.8).all()
    assert torch.equal(cos.argmax(1), torch.arange(4))  # each icon is nearest its own target


def test_best_of_tries_keeps_the_better_try_per_image(toy):
    tap, targets = toy
    objective = objectives.direction_cosine("block3", targets[:2], power=4)

    def run(tries, seed=0):
        return render.render(tap, objective, lambda s: param.fourier_image(2, 32, seed=s), transforms.standard(32),
                             steps=6, tries=tries, input_size=32, seed=seed)

    one, other, two = run(1), run(1, seed=1), run(2)
    torch.testing.assert_close(two.objective, torch.maximum(one.objective, other.objective))
    best = torch.where((other.objective > one.objective).view(-1, 1, 1, 1), other.images, one.images)
    torch.testing.assert_close(two.images, best)
    # icons rendered at another size than the model's input are resized for it
    small = render.render(tap, objective, lambda s: param.fourier_image(2, 24, seed=s), steps=3, input_size=32)
    assert small.images.shape == (2, 3, 24, 24)
