"""Generator plugins used by the tests (`plugins:NAME` in a study), imported by Ray workers too."""

import time

import torch

from ganscale.models.dcgan import DCGAN
from ganscale.weights import load_state_dict


def _toy(weights=None):
    module = DCGAN()
    module.load_state_dict(load_state_dict(weights or "builtin:dcgan_full.pt"))
    return module.eval()


class _Wrapped:
    num_classes = None
    resolution = 32

    def __init__(self, inner, fault=None, delay=0.0):
        self.inner, self.fault, self.delay = inner, fault, delay

    def to(self, device):
        self.inner.to(device)
        return self

    def generate(self, seeds):
        time.sleep(self.delay)
        images, labels = self.inner.generate(seeds)
        if self.fault == "nan":
            images = images.clone()
            images[0, 0, 0, 0] = float("nan")
        elif self.fault == "shape":
            images = images[:, :, :16]  # [B, 3, 16, 32] is fine; drop a channel instead
            images = images[:, :2]
        return images, labels


def slow_dcgan(delay: float = 0.2, weights=None):
    return _Wrapped(_toy(weights), delay=delay)


def nan_dcgan(weights=None):
    return _Wrapped(_toy(weights), fault="nan")


def wrong_shape_dcgan(weights=None):
    return _Wrapped(_toy(weights), fault="shape")


# --- a synthetic generator for dissection: unit u of layer `masks` IS the mask of class u + 1 -----

PALETTE = torch.tensor([[0.5, 0.5, 0.5], [0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])
MASK_CLASSES = ["background", "red", "green", "blue", "yellow"]


class _MaskNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.masks = torch.nn.Identity()  # the dissected layer: one-hot maps of the 4 object classes

    def forward(self, onehot):
        masks = self.masks(onehot)
        background = 1 - masks.sum(1, keepdim=True)
        weights = torch.cat([background, masks], 1)
        return torch.einsum("bkhw,kc->bchw", weights, PALETTE)


class MaskGenerator:
    """Seeded scenes of coloured rectangles on grey, 16x16, painted from their own class maps."""
    num_classes = None
    resolution = 16

    def __init__(self):
        self.module = _MaskNet()

    def to(self, device):
        return self

    def generate(self, seeds):
        onehot = torch.zeros(len(seeds), 4, 16, 16)
        for i, seed in enumerate(seeds):
            onehot[i] = _object_masks(torch.Generator().manual_seed(int(seed)))
        return self.module(onehot), None


def _object_masks(g: torch.Generator) -> torch.Tensor:
    """[4, 16, 16] one-hot masks of four rectangles (classes 1-4, later ones on top) drawn from g."""
    classmap = torch.zeros(16, 16, dtype=torch.long)
    for cls in range(1, 5):
        h, w = (int(v) for v in torch.randint(3, 7, (2,), generator=g))
        y, x = (int(v) for v in torch.randint(0, 16 - 6, (2,), generator=g))
        classmap[y:y + h, x:x + w] = cls
    return torch.nn.functional.one_hot(classmap, 5)[..., 1:].permute(2, 0, 1).float()


def mask_generator():
    return MaskGenerator()


class PaletteSegmenter:
    """Segments MaskGenerator's images exactly: the nearest palette colour of each pixel."""
    class_names = MASK_CLASSES

    def to(self, device):
        return self

    def __call__(self, images):
        distance = ((images[:, None] - PALETTE.view(1, 5, 3, 1, 1).to(images.device)) ** 2).sum(2)
        return distance.argmin(1)


def palette_segmenter():
    return PaletteSegmenter()


# --- a generator with a planted artifact unit: unit 4 of layer `units` paints a magenta square ----

MAGENTA = torch.tensor([1.0, 0.0, 1.0])


class _ArtifactNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.units = torch.nn.Identity()  # units 0-3: object masks; unit 4: the artifact

    def forward(self, maps):
        maps = self.units(maps)
        masks, artifact = maps[:, :4], maps[:, 4:5].clamp(0, 1)
        weights = torch.cat([(1 - masks.sum(1, keepdim=True)).clamp(0, 1), masks], 1)
        scene = torch.einsum("bkhw,kc->bchw", weights, PALETTE)
        return scene * (1 - artifact) + MAGENTA.view(1, 3, 1, 1) * artifact


class ArtifactGenerator(MaskGenerator):
    """MaskGenerator's scenes; in a third of the images unit 4 adds a magenta 4x4 square, which real
    scenes (`artifacts=False`) never have."""

    def __init__(self, artifacts: bool = True):
        self.module, self.artifacts = _ArtifactNet(), artifacts

    def generate(self, seeds):
        maps = torch.zeros(len(seeds), 5, 16, 16)
        for i, seed in enumerate(seeds):
            g = torch.Generator().manual_seed(int(seed))
            maps[i, :4] = _object_masks(g)
            if self.artifacts and int(torch.randint(0, 3, (1,), generator=g)) == 0:
                y, x = (int(v) for v in torch.randint(0, 12, (2,), generator=g))
                maps[i, 4, y:y + 4, x:x + 4] = 1
        return self.module(maps), None


def artifact_generator(artifacts: bool = True, weights=None):
    return ArtifactGenerator(artifacts)


# --- toy scenes as 8-bit pixels at any side: what a folder of their PNGs holds, exactly -----------

def scene_pixels(seed: int, side: int = 32, height: int | None = None):
    """The toy scene of `seed` as uint8 [H, W, 3], upsampled (PIL bicubic) to side x side (or
    height x side): the pixels a PNG of it holds."""
    import numpy as np
    from PIL import Image

    from ganscale.toyworld.scenes import render_scene

    image, _, _ = render_scene(int(seed))
    pixels = (image.transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
    height = height or side
    return pixels if (height, side) == pixels.shape[:2] else np.asarray(
        Image.fromarray(pixels).resize((side, height), Image.BICUBIC))


class PixelScenes:
    """Toy scenes as a generator of 8-bit pixels (x / 255 in float32, as an image file is read)."""
    num_classes = None

    def __init__(self, side: int):
        self.resolution = side

    def to(self, device):
        self.device = device
        return self

    def generate(self, seeds):
        import numpy as np

        pixels = np.stack([scene_pixels(s, self.resolution) for s in seeds])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
        return images.to(getattr(self, "device", "cpu")), None


def pixel_scenes(side: int = 64, weights=None):
    return PixelScenes(side)


def raises_while_building(weights=None):
    raise RuntimeError("the plugin's own bug while building")


class _RaisesWhileGenerating(_Wrapped):
    def generate(self, seeds):
        raise RuntimeError("the plugin's own bug while generating")


def raises_while_generating(weights=None):
    return _RaisesWhileGenerating(_toy(weights))


# --- workers that die (os._exit: no exception, the process is gone, as when the OOM killer strikes) ---


class _DiesWhileGenerating(_Wrapped):
    def generate(self, seeds):
        if len(seeds) > 1:  # the preflight's one image passes; the first chunk's batch kills the worker
            import os

            os._exit(1)
        return super().generate(seeds)


def dies_while_generating(weights=None):
    return _DiesWhileGenerating(_toy(weights))


class _DyingSegmenter(PaletteSegmenter):
    def __init__(self, where: str):
        self.where = where

    def to(self, device):
        if self.where == "build":
            import os

            os._exit(1)
        return self

    def __call__(self, images):
        import os

        os._exit(1)


def dying_segmenter(weights=None):
    """A segmenter whose dissect worker dies while it builds it."""
    return _DyingSegmenter("build")


def segmenter_dying_in_a_pass(weights=None):
    """A segmenter whose dissect worker dies when it first segments (in a statistics pass)."""
    return _DyingSegmenter("segment")
