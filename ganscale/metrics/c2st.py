"""Classifier two-sample test (Lopez-Paz & Oquab 2016) as seed 000 runs it, and SmoothGrad maps of
the classifier.

A classifier with the DCGAN discriminator's architecture learns real (class 1) against generated
(class 0) images on a 50/25/25 train/validation/test split, with early stopping on validation
accuracy. If the two sets came from one distribution, the held-out accuracy would be about
N(1/2, 1/(4 n_test)); the p-value is the one-sided tail of that. Seed 000 trains one classifier on
all generators pooled (in equal shares) and one per generator; so does `c2st`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

REAL, GENERATED = 1, 0


class C2STClassifier(nn.Module):
    """DCGAN discriminator (Radford et al. 2016) as seed 000 uses it: Conv2d kernel 3, stride 2,
    padding 1, LeakyReLU 0.2, BatchNorm after every conv but the first, channels doubling from 64
    (capped at 512) until the map is 4x4, then a linear layer to 2 logits."""

    def __init__(self, size: int = 32, base_channels: int = 64):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"C2STClassifier: image side must be a power of two >= 8, got {size}")
        layers, cin, side, cout = [], 3, size, base_channels
        while side > 4:
            layers += [nn.Conv2d(cin, cout, 3, 2, 1)]
            if cin != 3:
                layers += [nn.BatchNorm2d(cout)]
            layers += [nn.LeakyReLU(0.2)]
            cin, cout, side = cout, min(cout * 2, 512), side // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * 2 - 1).flatten(1))


@dataclasses.dataclass
class ClassifierRun:
    """One trained classifier and its accuracy tables. Test items are (source, index within source)."""
    name: str
    model: C2STClassifier
    train_accuracy: float
    validation_accuracy: float
    test_accuracy: float
    n_test: int
    p_value: float
    epochs: int
    best_epoch: int
    seconds: float
    per_source: dict[str, dict]
    test_sources: np.ndarray
    test_index: np.ndarray
    test_correct: np.ndarray

    def table(self) -> dict:
        return {"train_accuracy": self.train_accuracy, "validation_accuracy": self.validation_accuracy,
                "test_accuracy": self.test_accuracy, "n_test": self.n_test, "p_value": self.p_value,
                "epochs": self.epochs, "best_epoch": self.best_epoch, "seconds": round(self.seconds, 2),
                "per_source": self.per_source}


@dataclasses.dataclass
class C2STResult:
    classifiers: dict[str, ClassifierRun]  # "pooled" and one per generator

    def to_dict(self) -> dict:
        return {"classifiers": {name: run.table() for name, run in self.classifiers.items()}}


def null_p_value(accuracy: float, n_test: int) -> float:
    """One-sided p-value of a test accuracy under accuracy ~ N(1/2, 1/(4 n_test))."""
    return float(norm.sf((accuracy - 0.5) * math.sqrt(4 * n_test)))


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int) -> tuple[float, torch.Tensor]:
    model.eval()
    with torch.inference_mode():
        predictions = torch.cat([model(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])
    correct = predictions == labels
    return float(correct.float().mean()), correct


def train_classifier(name: str, images: torch.Tensor, labels: torch.Tensor, sources: np.ndarray, index: np.ndarray,
                     *, epochs: int, patience: int, batch_size: int, lr: float, seed: int,
                     progress: Callable[[str], None] | None = None) -> ClassifierRun:
    """Split 50/25/25 (seeded), train with Adam and cross-entropy, keep the weights of the best
    validation epoch, stop after `patience` epochs without improvement, and evaluate on the test split."""
    t0 = time.time()
    n = len(images)
    order = np.random.default_rng(seed).permutation(n)
    train, val, test = np.split(order, [n // 2, n // 2 + n // 4])
    torch.manual_seed(seed)
    model = C2STClassifier(images.shape[-1]).to(images.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch, epoch = -1.0, None, 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in torch.randperm(len(train), generator=generator).split(batch_size):
            rows = torch.as_tensor(train[batch.numpy()], device=images.device)
            loss = nn.functional.cross_entropy(model(images[rows]), labels[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        val_accuracy, _ = _accuracy(model, images[val], labels[val], batch_size)
        if progress:
            progress(f"c2st {name}: epoch {epoch}, validation accuracy {val_accuracy:.3f}")
        if val_accuracy > best:
            best, best_epoch = val_accuracy, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    train_accuracy, _ = _accuracy(model, images[train], labels[train], batch_size)
    test_accuracy, correct = _accuracy(model, images[test], labels[test], batch_size)
    correct = correct.cpu().numpy()
    test_sources = sources[test]
    per_source = {str(s): {"accuracy": float(correct[test_sources == s].mean()), "n": int((test_sources == s).sum())}
                  for s in dict.fromkeys(sources)}
    return ClassifierRun(name, model.eval(), train_accuracy, best, test_accuracy, len(test),
                         null_p_value(test_accuracy, len(test)), epoch, best_epoch, time.time() - t0, per_source,
                         test_sources, index[test], correct)


def c2st(real: torch.Tensor, generated: dict[str, torch.Tensor], *, pooled: bool = True, per_source: bool = True,
         real_name: str = "real", epochs: int = 30, patience: int = 5, batch_size: int = 128, lr: float = 2e-4,
         seed: int = 0, progress: Callable[[str], None] | None = None) -> C2STResult:
    """The test of seed 000 on images [N, 3, H, W] in [0, 1] (all on one device). The pooled
    classifier sees as many generated images as real ones, drawn in equal shares from every
    generator; each per-generator classifier sees min(len(real), len(generator)) of each."""
    runs = {}

    def run(name: str, parts: dict[str, torch.Tensor]):
        images = torch.cat(list(parts.values()))
        labels = torch.cat([torch.full((len(x),), REAL if s == real_name else GENERATED, dtype=torch.long)
                            for s, x in parts.items()]).to(images.device)
        sources = np.concatenate([np.full(len(x), s, dtype=object) for s, x in parts.items()])
        index = np.concatenate([np.arange(len(x)) for x in parts.values()])
        runs[name] = train_classifier(name, images, labels, sources, index, epochs=epochs, patience=patience,
                                      batch_size=batch_size, lr=lr, seed=seed, progress=progress)

    if pooled and generated:
        share = len(real) // len(generated)
        if share < 2:
            raise ValueError("c2st: too few real images for the pooled classifier")
        run("pooled", {real_name: real[:share * len(generated)], **{g: x[:share] for g, x in generated.items()}})
    if per_source:
        for g, x in generated.items():
            n = min(len(real), len(x))
            run(g, {real_name: real[:n], g: x[:n]})
    return C2STResult(runs)


def smoothgrad(model: nn.Module, images: torch.Tensor, target: torch.Tensor | int, samples: int = 100,
               sigma: float = 0.1, batch: int = 50, seed: int = 0) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the gradient of the target logit averaged over `samples`
    noisy copies x + N(0, (sigma (max x - min x))^2), then its absolute value, max over colour
    channels -> [B, H, W]. Seeded noise, so maps are reproducible."""
    model.eval()
    images = images.detach()
    target = torch.as_tensor(target, device=images.device).expand(len(images))
    spread = (images.flatten(1).max(1).values - images.flatten(1).min(1).values).view(-1, 1, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros_like(images)
    done = 0
    while done < samples:
        k = min(batch, samples - done)
        noise = torch.randn((k, *images.shape), generator=generator).to(images.device) * sigma * spread
        noisy = (images.unsqueeze(0) + noise).reshape(-1, *images.shape[1:]).requires_grad_(True)
        logits = model(noisy)
        chosen = logits.gather(1, target.repeat(k).view(-1, 1)).sum()
        grad, = torch.autograd.grad(chosen, noisy)
        total += grad.view(k, *images.shape).sum(0)
        done += k
    return (total / samples).abs().amax(1)
