"""The toy world: deterministic scenes with exact masks, and the small models shipped with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ganscale.models.base import Generator, Probe, Segmenter
from ganscale.models.dcgan import DCGAN
from ganscale.toyworld.models import ToyProbe, ToySegmenter
from ganscale.toyworld.scenes import (CLASS_NAMES, OBJECT_CLASSES, render_batch, render_scene,
                                      save_image_folder)
from ganscale.weights import BUILTIN_DIR, sha256_of

torch.set_num_threads(2)
SHIPPED = ["probe.pt", "segmenter.pt", "dcgan_full.pt", "dcgan_no_tree.pt",
           "dcgan_full_step0500.pt", "dcgan_full_step1500.pt"]


def _load(module: torch.nn.Module, name: str) -> torch.nn.Module:
    state = torch.load(BUILTIN_DIR / name, map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    return module.eval()


@pytest.fixture(scope="module")
def fresh_scenes():
    return render_batch(range(256))


# ---- scenes ---------------------------------------------------------------------------------


def test_class_lists():
    assert CLASS_NAMES == ["sky", "ground", "sun", "box", "tree", "ball"]
    assert OBJECT_CLASSES == ["sun", "box", "tree", "ball"]


def test_scene_is_determined_by_its_seed():
    image, mask, label = render_scene(123)
    again = render_scene(123)
    assert np.array_equal(image, again[0]) and np.array_equal(mask, again[1]) and label == again[2]
    other = render_scene(124)
    assert not np.array_equal(image, other[0]) and not np.array_equal(mask, other[1])
    images, masks, labels = render_batch([124, 123])
    assert torch.equal(images[1], torch.from_numpy(image)) and torch.equal(masks[1], torch.from_numpy(mask))
    assert labels[1].item() == label


def test_scene_shapes_dtypes_and_range(fresh_scenes):
    image, mask, label = render_scene(5)
    assert image.shape == (3, 32, 32) and image.dtype == np.float32
    assert mask.shape == (32, 32) and mask.dtype == np.int64
    assert isinstance(label, int) and 0 <= label < len(OBJECT_CLASSES)
    images, masks, labels = fresh_scenes
    assert images.shape == (256, 3, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (256, 32, 32) and masks.dtype == torch.int64
    assert labels.shape == (256,) and labels.dtype == torch.int64
    assert images.min() >= 0 and images.max() <= 1
    assert masks.min() >= 0 and masks.max() < len(CLASS_NAMES)
    assert set(labels.tolist()) == set(range(len(OBJECT_CLASSES)))  # every class appears


def test_mask_holds_the_label_and_the_background(fresh_scenes):
    _, masks, labels = fresh_scenes
    for mask, label in zip(masks, labels):
        present = set(mask.unique().tolist())
        assert CLASS_NAMES.index(OBJECT_CLASSES[label]) in present
        assert {0, 1} <= present  # sky and ground
        assert mask[0].eq(0).any() and mask[-1].eq(1).any()  # sky at the top, ground at the bottom


def test_mask_matches_the_painted_pixels():
    """Pixels of one class look alike (sky blue, sun yellow...), so the mask is where things were drawn."""
    images, masks, _ = render_batch(range(300))
    mean = {c: images.permute(1, 0, 2, 3)[:, masks == i].mean(1) for i, c in enumerate(CLASS_NAMES)}
    r, g, b = (mean["sky"] * 1).tolist()
    assert b > r and b > g
    assert mean["sun"][0] > 0.8 and mean["sun"][2] < 0.3
    assert mean["box"][0] > mean["box"][1] + 0.3
    assert mean["tree"][1] > mean["tree"][0] and mean["tree"][1] > mean["tree"][2]
    assert mean["ball"][2] > mean["ball"][0] + 0.4


def test_exclude():
    _, masks, labels = render_batch(range(200), exclude=("tree",))
    assert not (masks == CLASS_NAMES.index("tree")).any()
    assert OBJECT_CLASSES.index("tree") not in labels.tolist()
    assert set(labels.tolist()) == {0, 1, 3}
    _, masks, labels = render_batch(range(200), exclude=["tree", "sun", "ball"])
    assert set(masks.unique().tolist()) <= {0, 1, 3} and set(labels.tolist()) == {1}
    with pytest.raises(ValueError, match="unknown"):
        render_scene(0, exclude=("cat",))
    with pytest.raises(ValueError):
        render_scene(0, exclude=OBJECT_CLASSES)


def test_image_folder_round_trips_through_pil(tmp_path):
    from PIL import Image

    seeds = [7, 3, 12]
    paths = save_image_folder(tmp_path / "scenes", seeds)
    assert sorted(p.name for p in (tmp_path / "scenes").iterdir()) == sorted(p.name for p in paths)
    assert [p.name for p in paths] == ["00000007.png", "00000003.png", "00000012.png"]
    for seed, path in zip(seeds, paths):
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (32, 32)
            pixels = np.asarray(im).astype(np.float32).transpose(2, 0, 1) / 255
        assert np.abs(pixels - render_scene(seed)[0]).max() <= 0.5 / 255 + 1e-6


# ---- models ---------------------------------------------------------------------------------


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_models_have_the_protocols_shapes():
    from ganscale.models.registry import HookedProbe, ModuleSegmenter

    x = torch.rand(2, 3, 32, 32)
    probe = ToyProbe().eval()
    hooked = HookedProbe(probe, ToyProbe.layers, ToyProbe.input_size, ToyProbe.num_classes)
    assert isinstance(hooked, Probe)
    acts, logits = hooked(x)
    assert logits.shape == (2, 4) and list(acts) == ["block1", "block2", "block3"]
    assert [tuple(a.shape) for a in acts.values()] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4)]
    assert all((a >= 0).all() for a in acts.values())  # post-ReLU

    segmenter = ToySegmenter().eval()
    assert segmenter(x).shape == (2, 6, 32, 32) and segmenter.class_names == CLASS_NAMES
    classes = segmenter.segment(x)
    assert classes.shape == (2, 32, 32) and classes.dtype == torch.int64
    assert isinstance(ModuleSegmenter(segmenter, CLASS_NAMES), Segmenter)

    gen = DCGAN()
    assert isinstance(gen, Generator) and gen.resolution == 32 and gen.z_dim == 64 and gen.num_classes is None
    images, labels = gen.generate([1, 2])
    assert images.shape == (2, 3, 32, 32) and labels is None
    assert images.min() >= 0 and images.max() <= 1
    assert gen.forward(torch.randn(3, 64)).shape == (3, 3, 32, 32)
    feats = {}

    def hook(name):
        def record(_module, _inputs, output):
            feats[name] = tuple(output.shape)
        return record

    for name in ("layer1", "layer2", "layer3", "output"):
        getattr(gen, name).register_forward_hook(hook(name))
    gen.generate([0])
    assert feats["layer1"][1:] == (128, 4, 4) and feats["layer3"][1:] == (32, 16, 16)
    assert feats["output"][1:] == (3, 32, 32)
    assert DCGAN(resolution=64).generate([0])[0].shape == (1, 3, 64, 64)

    assert _params(probe) < 200_000 and _params(segmenter) < 200_000
    assert 250_000 < _params(gen) < 350_000


# ---- shipped weights --------------------------------------------------------------------------


def test_shipped_weights_load_strictly_and_match_the_manifest():
    manifest = json.loads((BUILTIN_DIR / "MANIFEST.json").read_text())
    total = 0
    for name in SHIPPED:
        path = BUILTIN_DIR / name
        module = ToyProbe() if name == "probe.pt" else ToySegmenter() if name == "segmenter.pt" else DCGAN()
        _load(module, name)
        assert manifest[name]["sha256"] == sha256_of(path) and manifest[name]["bytes"] == path.stat().st_size
        total += path.stat().st_size
    assert total < 6_000_000


def test_shipped_probe_and_segmenter_are_accurate(fresh_scenes):
    images, masks, labels = fresh_scenes
    probe = _load(ToyProbe(), "probe.pt")
    segmenter = _load(ToySegmenter(), "segmenter.pt")
    with torch.no_grad():
        accuracy = (probe(images).argmax(1) == labels).float().mean().item()
        pixel_accuracy = (segmenter.segment(images) == masks).float().mean().item()
    assert accuracy >= 0.9
    assert pixel_accuracy >= 0.9


def test_no_tree_generator_never_learned_trees():
    probe = _load(ToyProbe(), "probe.pt")
    tree = OBJECT_CLASSES.index("tree")
    fractions = {}
    for name in ("dcgan_full.pt", "dcgan_no_tree.pt"):
        images, _ = _load(DCGAN(), name).generate(range(256))
        with torch.no_grad():
            predicted = probe(images).argmax(1)
        fractions[name] = torch.bincount(predicted, minlength=4).float() / 256
    assert fractions["dcgan_no_tree.pt"][tree] < 0.05
    assert fractions["dcgan_full.pt"][tree] >= 0.10
    assert (fractions["dcgan_full.pt"] > 0.05).all()  # the full generator draws every class


def test_generate_is_batch_independent_and_repeatable():
    gen = _load(DCGAN(), "dcgan_full.pt")
    batch, _ = gen.generate([3, 4, 5])
    single, _ = gen.generate([4])
    assert torch.equal(batch[1], single[0])
    seeds = list(range(40))
    first, _ = gen.generate(seeds)
    assert torch.equal(first, gen.generate(seeds)[0])
    assert torch.equal(first[33:], gen.generate(seeds[33:])[0])  # across the internal chunking too
    assert not torch.equal(first[0], first[1])
    assert gen.generate([])[0].shape == (0, 3, 32, 32)
    gen.chunk_size = None  # one call for the whole batch: same images up to rounding
    assert torch.allclose(gen.generate(seeds)[0], first, atol=1e-5)
