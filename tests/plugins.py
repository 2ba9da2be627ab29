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
