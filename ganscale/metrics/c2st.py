"""Classifier two-sample test (Lopez-Paz & Oquab 2016) as seed 000 (section 4.1) runs it, and
SmoothGrad sensitivity maps of the classifier (Smilkov et al. 2017; seed 000 section 6.3).

A classifier with the DCGAN discriminator's architecture learns real (class 1) against generated
(class 0) images on a 50/25/25 train/validation/test split (stratified by source), with Adam,
cross-entropy and early stopping on validation accuracy (the best epoch's weights are kept). If
real and generated images came from one distribution, the held-out accuracy would be about
N(1/2, 1/(4 n_test)); the p-value is the one-sided upper tail of that. Seed 000 trains one
classifier on all generators pooled (in equal shares, balanced against as many real images) and
one per generator; `c2st` does both.

    result = c2st(real, {"stylegan": a, "cocogan": b}, seed=0)       # images [N, 3, H, W] in [0, 1]
    json.dumps(result.to_dict())                                     # the tables, for summary.json
    run = result.classifiers["pooled"]                               # ClassifierRun: model, splits, ...
    ids = correct_examples(result, "cocogan", 8)                     # correctly classified test images
    maps = smoothgrad(run.model, b[ids], GENERATED, samples=100, sigma=0.1)   # [8, H, W]
    smoothgrad_figure(b[ids], maps, "cocogan.png", "Real vs GAN: COCO-GAN")
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

REAL, GENERATED = 1, 0
SPLITS = ("train", "validation", "test")


class C2STClassifier(nn.Module):
    """The DCGAN discriminator (Radford et al. 2016) with seed 000's settings: four Conv2d layers of
    64, 128, 256 and 512 channels (DCGAN's progression; seed 000's figure 4.1.1 is not legible),
    each kernel 3, stride 2, padding 1, followed by LeakyReLU 0.2, then one linear layer from the
    flattened last map to 2 logits (argmax = predicted class; REAL = 1, GENERATED = 0). Any square
    input side works: each conv halves it (rounding up), so the last map is ceil(size / 16) on a
    side (2 for 32, 16 for 256). Weights start as DCGAN's (normal, std 0.02; zero biases). Inputs
    are in [0, 1] and mapped to [-1, 1] inside.

    No BatchNorm (DCGAN's discriminator has it, seed 000 lists none): with a few hundred to a few
    thousand training images an epoch is a handful of steps, too few for BatchNorm's running
    statistics, and the eval-mode classifier then answers one class for everything (seen on the toy
    world: training loss ~0, validation accuracy 0.5). Without it every image's logits depend on
    that image alone, in training, evaluation and SmoothGrad alike."""

    def __init__(self, size: int = 32, channels: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        if size < 1 or not channels:
            raise ValueError(f"C2STClassifier: bad image side {size} or channels {channels}")
        layers, cin, side = [], 3, size
        for cout in channels:
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.LeakyReLU(0.2)]
            cin, side = cout, (side + 1) // 2
        self.size = size
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin * side * side, 2)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * 2 - 1).flatten(1))


def null_p_value(accuracy: float, n_test: int) -> float:
    """One-sided p-value of a test accuracy under the null accuracy ~ N(1/2, 1/(4 n_test))
    (P[accuracy >= observed]). Underflows to 0 beyond z ~ 38; see `null_log10_p_value`."""
    return float(norm.sf((accuracy - 0.5) * math.sqrt(4 * n_test)))


def null_log10_p_value(accuracy: float, n_test: int) -> float:
    """log10 of `null_p_value`, finite where the p-value itself underflows."""
    return float(norm.logsf((accuracy - 0.5) * math.sqrt(4 * n_test)) / math.log(10))


@dataclasses.dataclass
class ClassifierRun:
    """One trained classifier of the test and its tables.

    `model` holds the best validation epoch's weights (eval mode, on the training device).
    `split[source][part]` are the indices, into the images passed to `c2st` for that source, of the
    images this classifier used for part in ("train", "validation", "test"); the test items in test
    order are (`test_sources[i]`, `test_index[i]`), and `test_correct[i]` says whether the model
    classified that item correctly. `history` has one entry per epoch run:
    {"epoch", "train_loss", "validation_accuracy"}."""
    name: str
    model: C2STClassifier
    labels: dict[str, int]
    train_accuracy: float
    validation_accuracy: float
    test_accuracy: float
    counts: dict[str, int]
    p_value: float
    log10_p_value: float
    epochs: int
    best_epoch: int
    history: list[dict]
    seconds: float
    per_source: dict[str, dict]
    split: dict[str, dict[str, np.ndarray]]
    test_sources: np.ndarray
    test_index: np.ndarray
    test_correct: np.ndarray

    @property
    def n_test(self) -> int:
        return self.counts["test"]

    def table(self) -> dict:
        """JSON-ready accuracy table (plain floats, ints and strings)."""
        return {"train_accuracy": self.train_accuracy, "validation_accuracy": self.validation_accuracy,
                "test_accuracy": self.test_accuracy, "n_train": self.counts["train"],
                "n_validation": self.counts["validation"], "n_test": self.counts["test"],
                "p_value": self.p_value, "log10_p_value": self.log10_p_value, "epochs": self.epochs,
                "best_epoch": self.best_epoch,
                "validation_history": [h["validation_accuracy"] for h in self.history],
                "seconds": round(self.seconds, 2), "per_source": self.per_source}


@dataclasses.dataclass
class C2STResult:
    """The classifiers of one test: "pooled" (all generators in equal shares) and one per generator
    (named as in `generated`), each a `ClassifierRun`."""
    classifiers: dict[str, ClassifierRun]
    real_name: str = "real"

    @property
    def models(self) -> dict[str, C2STClassifier]:
        return {name: run.model for name, run in self.classifiers.items()}

    def to_dict(self) -> dict:
        """The tables only (no models, no index arrays), JSON-serialisable."""
        return {"classifiers": {name: run.table() for name, run in self.classifiers.items()},
                "real": self.real_name,
                "null_hypothesis": "test accuracy ~ N(1/2, 1/(4 n_test)); p-value one-sided (accuracy > 1/2)"}


def predict(model: nn.Module, images: torch.Tensor, batch: int = 256,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Predicted classes (argmax of the logits, on the CPU) of `model` in eval mode, in batches."""
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    with torch.inference_mode():
        out = [model(images[i:i + batch].to(device)).argmax(1).cpu() for i in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def split_indices(sizes: dict[str, int], seed: int) -> dict[str, dict[str, np.ndarray]]:
    """The split of `train_classifier`: per source (name -> number of images) a permutation seeded
    by (seed, n, name), cut 50/25/25 (train gets n // 2, validation n // 4, test the rest)."""
    out = {}
    for s, n in sizes.items():
        order = np.random.default_rng([seed % 2**63, n, *s.encode()]).permutation(n)
        out[s] = dict(zip(SPLITS, np.split(order, [n // 2, n // 2 + n // 4])))
    return out


def _share(correct: np.ndarray) -> float:
    """Accuracy as correct / total in float64 (the same number however it is computed)."""
    return int(correct.sum()) / len(correct)


def train_classifier(name: str, parts: dict[str, torch.Tensor], labels: dict[str, int], *, epochs: int = 30,
                     patience: int = 5, batch_size: int = 128, lr: float = 2e-4, seed: int = 0,
                     device: torch.device | str | None = None,
                     progress: Callable[[str], None] | None = None) -> ClassifierRun:
    """Train one C2ST classifier on `parts` (source -> images [n, 3, H, W] in [0, 1]) with class
    `labels[source]`: split each source 50/25/25 (seeded, so every split keeps the sources'
    proportions), train with Adam (betas 0.5, 0.999 as DCGAN) on cross-entropy, evaluate validation
    accuracy after every epoch, keep the best epoch's weights (the first, on ties), stop after
    `patience` epochs without improvement, once validation accuracy is 1 (no later epoch could
    replace the kept weights, so stopping there changes nothing but the time) or after `epochs`,
    and evaluate on the test split. Epochs are reported through `ganscale.progress.Progress`."""
    from ganscale.progress import Progress

    t0 = time.perf_counter()
    first = next(iter(parts.values()))
    device = torch.device(device) if device is not None else first.device
    for s, x in parts.items():
        if len(x) < 4:
            raise ValueError(f"c2st: {name}: source {s!r} has {len(x)} images; at least 4 are needed for the split")
    split = split_indices({s: len(x) for s, x in parts.items()}, seed)
    rows = {}
    for part in SPLITS:
        x = torch.cat([parts[s][split[s][part]] for s in parts]).to(device)
        y = torch.cat([torch.full((len(split[s][part]),), labels[s], dtype=torch.long) for s in parts]).to(device)
        rows[part] = (x, y)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = C2STClassifier(first.shape[-1])
    model = model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    shuffle = torch.Generator().manual_seed(seed)
    train_x, train_y = rows["train"]
    best, best_state, best_epoch, history = -1.0, None, 0, []
    bar = Progress(f"c2st {name}", epochs, unit="epochs")
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum = 0.0
        for batch in torch.randperm(len(train_x), generator=shuffle).split(batch_size):
            batch = batch.to(device)
            loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_sum += float(loss.detach()) * len(batch)
        val_x, val_y = rows["validation"]
        val_accuracy = int((predict(model, val_x, 2 * batch_size, device) == val_y.cpu()).sum()) / len(val_y)
        history.append({"epoch": epoch, "train_loss": loss_sum / len(train_x), "validation_accuracy": val_accuracy})
        if progress:
            progress(f"c2st {name}: epoch {epoch}, validation accuracy {val_accuracy:.3f}")
        bar.advance(1, f"validation accuracy {val_accuracy:.3f}")
        if val_accuracy > best:
            best, best_epoch = val_accuracy, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
        if best >= 1.0:
            break
    bar.close(f"stopped after {len(history)} epochs, best {best:.3f} at epoch {best_epoch}")
    model.load_state_dict(best_state)
    model.eval()

    correct = {part: (predict(model, x, 2 * batch_size, device) == y.cpu()).numpy() for part, (x, y) in rows.items()}
    test_sources = np.concatenate([np.full(len(split[s]["test"]), s, dtype=object) for s in parts])
    test_index = np.concatenate([split[s]["test"] for s in parts])
    per_source = {}
    for s in parts:
        ok = correct["test"][test_sources == s]
        per_source[s] = {"label": "real" if labels[s] == REAL else "generated",
                         "accuracy": _share(ok) if len(ok) else None, "n": int(len(ok)),
                         "correct": int(ok.sum()), "n_train": int(len(split[s]["train"])),
                         "n_validation": int(len(split[s]["validation"]))}
    test_accuracy = _share(correct["test"])
    n_test = int(len(correct["test"]))
    return ClassifierRun(name=name, model=model, labels=dict(labels), train_accuracy=_share(correct["train"]),
                         validation_accuracy=_share(correct["validation"]), test_accuracy=test_accuracy,
                         counts={part: int(len(correct[part])) for part in SPLITS},
                         p_value=null_p_value(test_accuracy, n_test),
                         log10_p_value=null_log10_p_value(test_accuracy, n_test), epochs=len(history),
                         best_epoch=best_epoch, history=history, seconds=time.perf_counter() - t0,
                         per_source=per_source, split=split, test_sources=test_sources, test_index=test_index,
                         test_correct=correct["test"])


def _check_images(name: str, x: torch.Tensor, shape: tuple | None) -> tuple:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise ValueError(f"c2st: {name}: images must be a tensor [N, 3, H, H], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"c2st: {name}: images must be floating point in [0, 1], got {x.dtype}")
    if shape is not None and tuple(x.shape[1:]) != shape:
        raise ValueError(f"c2st: {name}: images are {tuple(x.shape[1:])}, the real ones {shape}")
    return tuple(x.shape[1:])


def c2st(real: torch.Tensor, generated: dict[str, torch.Tensor], *, pooled: bool = True, per_source: bool = True,
         real_name: str = "real", epochs: int = 30, patience: int = 5, batch_size: int = 128, lr: float = 2e-4,
         seed: int = 0, device: torch.device | str | None = None,
         progress: Callable[[str], None] | None = None) -> C2STResult:
    """The classifier two-sample test of seed 000 on images [N, 3, H, H] in [0, 1].

    pooled: one classifier on real against all generators, in equal shares: with k generators it
    uses share = min(len(real) // k, min len(generator)) images of each generator (the first ones)
    and share * k real images, so the pool is balanced real/generated (classifier "pooled").
    per_source: one classifier per generator on n = min(len(real), len(generator)) images of each
    (classifier named as the generator). Every classifier: see `train_classifier`; its result
    depends only on its own images and `seed` (not on the other generators).
    device: where to train (default: the device `real` is on); deterministic given `seed` on the CPU."""
    if not generated:
        raise ValueError("c2st: no generated images")
    if real_name in generated:
        raise ValueError(f"c2st: a generator is named like the real images ({real_name!r})")
    shape = _check_images(real_name, real, None)
    for g, x in generated.items():
        _check_images(g, x, shape)
    if device is None:
        device = real.device
    train = dict(epochs=epochs, patience=patience, batch_size=batch_size, lr=lr, seed=seed, device=device,
                 progress=progress)
    runs = {}
    if pooled:
        share = min(len(real) // len(generated), *(len(x) for x in generated.values()))
        parts = {real_name: real[:share * len(generated)], **{g: x[:share] for g, x in generated.items()}}
        labels = {s: REAL if s == real_name else GENERATED for s in parts}
        runs["pooled"] = train_classifier("pooled", parts, labels, **train)
    if per_source:
        for g, x in generated.items():
            n = min(len(real), len(x))
            runs[g] = train_classifier(g, {real_name: real[:n], g: x[:n]}, {real_name: REAL, g: GENERATED}, **train)
    return C2STResult(runs, real_name)


def correct_examples(result: C2STResult | ClassifierRun, source: str, n: int, classifier: str = "pooled") -> np.ndarray:
    """Indices (into the images of `source` passed to `c2st`, ascending) of up to `n` test images of
    that source the classifier got right: the images for the report's SmoothGrad panels. With a
    C2STResult, `classifier` picks the run ("pooled" or a generator's name)."""
    run = result.classifiers[classifier] if isinstance(result, C2STResult) else result
    if source not in run.split:
        raise KeyError(f"c2st: classifier {run.name!r} saw no source {source!r} (it saw {list(run.split)})")
    return np.sort(run.test_index[(run.test_sources == source) & run.test_correct])[:n].astype(np.int64)


def smoothgrad(model: nn.Module, images: torch.Tensor, target: torch.Tensor | int, samples: int = 100,
               sigma: float = 0.1, batch: int = 256, seed: int = 0, reduce: str = "max",
               objective: str = "logit") -> torch.Tensor:
    """SmoothGrad sensitivity maps (Smilkov et al. 2017) -> [B, H, W] on the CPU, float32.

    For each image x, the input gradient of the objective averaged over `samples` noisy copies
    x + N(0, sigma^2 (max x - min x)^2) (max/min over that image), then its absolute value reduced
    over colour channels: reduce="max" (max |.|, as Simonyan et al. 2013) or "mean" (mean |.|).
    objective="logit": the target class's logit (Smilkov et al.); "loss": the cross-entropy loss of
    the target class, as seed 000 section 6.3 writes it. target: class per image (int or [B]).
    sigma=0 gives the plain gradient. The model runs in eval mode on its own device, `batch` noisy
    images per pass; the noise is drawn per copy from a generator seeded with `seed`, so maps are
    reproducible and do not depend on `batch` (up to float summation order)."""
    if reduce not in ("max", "mean") or objective not in ("logit", "loss"):
        raise ValueError(f"smoothgrad: reduce must be max/mean, objective logit/loss; got {reduce!r}, {objective!r}")
    if samples < 1 or sigma < 0:
        raise ValueError(f"smoothgrad: need samples >= 1 and sigma >= 0, got {samples}, {sigma}")
    model.eval()
    device = next(model.parameters()).device
    images = images.detach().float().cpu()
    b = len(images)
    target = torch.as_tensor(target, dtype=torch.long).expand(b).to(device)
    flat = images.flatten(1)
    scale = (sigma * (flat.max(1).values - flat.min(1).values)).view(-1, 1, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    per_pass = max(1, batch // max(b, 1))  # noisy copies of the whole batch per forward pass
    total = torch.zeros(images.shape, dtype=torch.float64)
    done = 0
    while done < samples:
        k = min(per_pass, samples - done)
        noise = torch.stack([torch.randn(images.shape, generator=generator) for _ in range(k)]) * scale
        noisy = (images.unsqueeze(0) + noise).reshape(-1, *images.shape[1:]).to(device).requires_grad_(True)
        logits = model(noisy)
        t = target.repeat(k)
        if objective == "logit":
            value = logits.gather(1, t.view(-1, 1)).sum()
        else:
            value = nn.functional.cross_entropy(logits, t, reduction="sum")
        grad, = torch.autograd.grad(value, noisy)
        total += grad.detach().view(k, *images.shape).sum(0).cpu().double()
        done += k
    mean = (total / samples).abs()
    return (mean.amax(1) if reduce == "max" else mean.mean(1)).float()


def smoothgrad_figure(images: torch.Tensor | dict[str, torch.Tensor], maps: torch.Tensor | dict[str, torch.Tensor],
                      path: str | Path, title: str, overlay: bool = True) -> Path:
    """A PNG panel (matplotlib Agg, no pyplot state): for each source (a dict of them, or one
    batch), a row of images [B, 3, H, W] in [0, 1] and below it their maps [B, H, W], each map
    scaled to its own maximum (inferno), drawn over a grey copy of the image when `overlay`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(images, dict):
        images, maps = {"": images}, {"": maps}
    cols = max((len(x) for x in images.values()), default=1) or 1
    fig = Figure(figsize=(1.2 * cols + 1.2, 2.4 * len(images) + 0.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 * len(images), cols, squeeze=False)
    for r, (source, x) in enumerate(images.items()):
        x = torch.as_tensor(x).detach().float().cpu().clamp(0, 1)
        m = torch.as_tensor(maps[source]).detach().float().cpu()
        axes[2 * r, 0].set_ylabel(source or "image", fontsize=8)
        axes[2 * r + 1, 0].set_ylabel("SmoothGrad", fontsize=8)
        for c in range(cols):
            top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
            for ax in (top, bottom):
                ax.set_xticks([])
                ax.set_yticks([])
            if c >= len(x):
                top.axis("off")
                bottom.axis("off")
                continue
            top.imshow(x[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            heat = (m[c] / max(float(m[c].max()), 1e-12)).numpy()
            if overlay:
                bottom.imshow(x[c].mean(0).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                bottom.imshow(heat, cmap="inferno", alpha=0.7, vmin=0, vmax=1, interpolation="nearest")
            else:
                bottom.imshow(heat, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
