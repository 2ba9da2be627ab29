"""Retrain the toy world's shipped models (about 10 minutes on 2 CPU cores).

    python -m ganscale.toyworld.train [--out DIR] [--steps N] [--only NAME] [--threads 2]

Writes into DIR (default: ganscale/toyworld/weights):
  probe.pt            ToyProbe, the scene classifier (main object: sun/box/tree/ball)
  segmenter.pt        ToySegmenter, per-pixel classes (sky/ground/sun/box/tree/ball)
  dcgan_full.pt       DCGAN trained on all scenes
  dcgan_no_tree.pt    the same DCGAN trained on scenes without trees: it never learns them
  dcgan_full_step0500.pt, dcgan_full_step1500.pt   early checkpoints of the full run
  MANIFEST.json       per file: sha256, bytes, steps, seconds, quality figures
All files are state_dicts (load with torch.load(..., weights_only=True)). Training is seeded;
each model renders its own pool of training scenes from seeds >= 10,000,000 at its start, which
never meet the small seeds evaluations use (evaluations here use seeds 0..1999). The generators
shipped are the exponential moving average of the trained weights, BatchNorm statistics
recalibrated. `--only NAME` retrains one model (the generators' figures
need probe.pt and segmenter.pt in DIR); `--steps N` overrides the step count of every model
trained (for smoke tests).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ganscale.models.dcgan import DCGAN
from ganscale.toyworld.models import ToyProbe, ToySegmenter
from ganscale.toyworld.scenes import CLASS_NAMES, OBJECT_CLASSES, render_batch

DEFAULT_OUT = Path(__file__).parent / "weights"
TRAIN_SEED0 = {"probe": 10_000_000, "segmenter": 11_000_000, "dcgan_full": 12_000_000, "dcgan_no_tree": 13_000_000}
TORCH_SEED = {"probe": 1, "segmenter": 2, "dcgan_full": 3, "dcgan_no_tree": 4}
STEPS = {"probe": 500, "segmenter": 500, "dcgan_full": 4000, "dcgan_no_tree": 4000}
POOL = {"probe": 20_000, "segmenter": 12_000, "dcgan_full": 24_000, "dcgan_no_tree": 24_000}
EXCLUDE = {"dcgan_full": (), "dcgan_no_tree": ("tree",)}
CHECKPOINTS = {"dcgan_full": (500, 1500)}
EVAL_SCENES = 2000  # seeds 0..1999
EMA_DECAY = 0.999
NAMES = list(STEPS)


def pool(name: str, n: int, exclude=()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training scenes rendered from seeds TRAIN_SEED0[name] + i."""
    return render_batch(range(TRAIN_SEED0[name], TRAIN_SEED0[name] + n), exclude)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild blur, brightness and noise, so the probe and segmenter also read blurry GAN samples."""
    b = x.shape[0]
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    amount = torch.rand(b, 1, 1, 1, generator=g) * (torch.rand(b, 1, 1, 1, generator=g) < 0.5)
    x = x + amount * (blurred - x)
    x = x * (1 + 0.1 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5))
    x = x + torch.randn(x.shape, generator=g) * 0.03 * torch.rand(b, 1, 1, 1, generator=g)
    return x.clamp(0, 1)


def _schedule(opt: torch.optim.Optimizer, steps: int):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=steps,
                                               pct_start=0.15)


@torch.no_grad()
def _predict(module: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    module.eval()
    return torch.cat([module(images[i:i + batch]) for i in range(0, len(images), batch)])


def _fit(name: str, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch: int, steps: int, log,
         weight: torch.Tensor | None = None) -> nn.Module:
    """Supervised training on augmented random batches of a rendered pool (probe and segmenter)."""
    g = torch.Generator().manual_seed(TORCH_SEED[name])
    opt = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=1e-4)
    sched = _schedule(opt, steps)
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        loss = F.cross_entropy(model(augment(images[idx], g)), targets[idx], weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps:
            log(f"{name} step {step}/{steps}: loss {loss.item():.4f}")
    return model


def train_probe(steps: int, log) -> tuple[nn.Module, dict]:
    images, _, labels = pool("probe", POOL["probe"])
    torch.manual_seed(TORCH_SEED["probe"])
    model = _fit("probe", ToyProbe(), images, labels, 128, steps, log)
    test_x, _, test_y = render_batch(range(EVAL_SCENES))
    pred = _predict(model, test_x).argmax(1)
    per_class = {c: round((pred[test_y == i] == i).float().mean().item(), 4) for i, c in enumerate(OBJECT_CLASSES)}
    return model, {"test_accuracy": round((pred == test_y).float().mean().item(), 4),
                   "test_accuracy_per_class": per_class, "test_scenes": f"seeds 0..{EVAL_SCENES - 1}"}


def train_segmenter(steps: int, log) -> tuple[nn.Module, dict]:
    images, masks, _ = pool("segmenter", POOL["segmenter"])
    torch.manual_seed(TORCH_SEED["segmenter"])
    # objects are ~2% of the pixels each: weight them up so their edges are learned too
    weight = torch.tensor([1.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    model = _fit("segmenter", ToySegmenter(), images, masks, 64, steps, log, weight)
    test_x, test_m, _ = render_batch(range(EVAL_SCENES))
    pred = _predict(model, test_x).argmax(1)
    iou = {}
    for i, c in enumerate(CLASS_NAMES):
        inter = ((pred == i) & (test_m == i)).sum().item()
        union = ((pred == i) | (test_m == i)).sum().item()
        iou[c] = round(inter / max(union, 1), 4)
    objects = test_m >= 2
    return model, {"pixel_accuracy": round((pred == test_m).float().mean().item(), 4),
                   "object_pixel_accuracy": round((pred[objects] == test_m[objects]).float().mean().item(), 4),
                   "iou": iou, "test_scenes": f"seeds 0..{EVAL_SCENES - 1}"}


class Discriminator(nn.Module):
    """DCGAN discriminator mirroring the generator: 32x32 -> 16 -> 8 -> 4 -> logit."""

    def __init__(self, ch: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ch * 2, ch * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 4), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ch * 4, 1, 4, 1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1).flatten()


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


@torch.no_grad()
def _recalibrated(gen: DCGAN, seed: int, batches: int = 16, batch: int = 256) -> DCGAN:
    """A copy of `gen` whose BatchNorm running statistics are the exact averages over fresh
    latents (the EMA weights never produced the running statistics tracked during training)."""
    out = copy.deepcopy(gen)
    norms = [m for m in out.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    out.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        out(torch.randn(batch, out.z_dim, generator=g))
    for m in norms:
        m.momentum = 0.1
    return out.eval()


def train_gan(name: str, steps: int, log, checkpoints=(), save_checkpoint=None) -> DCGAN:
    """Non-saturating DCGAN training; the generator returned (and checkpointed) is the
    exponential moving average of the trained one, with BatchNorm statistics recalibrated."""
    images, _, _ = pool(name, POOL[name], EXCLUDE[name])
    torch.manual_seed(TORCH_SEED[name])
    g = torch.Generator().manual_seed(TORCH_SEED[name])
    gen, disc = DCGAN(), Discriminator()
    gen.apply(_init)
    disc.apply(_init)
    opt_g = torch.optim.Adam(gen.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), 2e-4, betas=(0.5, 0.999))
    batch = 64
    real_target, fake_target = torch.full((batch,), 0.9), torch.zeros(batch)  # one-sided label smoothing
    ema = copy.deepcopy(gen).requires_grad_(False)
    gen.train()
    disc.train()
    for step in range(1, steps + 1):
        real = images[torch.randint(0, len(images), (batch,), generator=g)]
        fake = gen(torch.randn(batch, gen.z_dim, generator=g))
        loss_d = (F.binary_cross_entropy_with_logits(disc(real), real_target)
                  + F.binary_cross_entropy_with_logits(disc(fake.detach()), fake_target))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(disc(fake), torch.ones(batch))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        with torch.no_grad():
            decay = min(EMA_DECAY, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), gen.parameters()):
                p_ema.lerp_(p, 1 - decay)
        if step % 250 == 0 or step == steps:
            log(f"{name} step {step}/{steps}: loss_d {loss_d.item():.3f} loss_g {loss_g.item():.3f}")
        if step in checkpoints and save_checkpoint is not None:
            save_checkpoint(step, _recalibrated(ema, TORCH_SEED[name] + step))
    return _recalibrated(ema, TORCH_SEED[name])


@torch.no_grad()
def generator_figures(gen: DCGAN, probe: nn.Module | None, segmenter: nn.Module | None, n: int = EVAL_SCENES) -> dict:
    """What the probe and the segmenter see in the generator's samples for seeds 0..n-1."""
    images = torch.cat([gen.generate(range(i, min(i + 500, n)))[0] for i in range(0, n, 500)])
    figures: dict = {"samples": f"seeds 0..{n - 1}"}
    if probe is not None:
        counts = torch.bincount(_predict(probe, images).argmax(1), minlength=len(OBJECT_CLASSES))
        figures["probe_label_fractions"] = {c: round(counts[i].item() / n, 4) for i, c in enumerate(OBJECT_CLASSES)}
    if segmenter is not None:
        seg = _predict(segmenter, images).argmax(1)
        counts = torch.bincount(seg.flatten(), minlength=len(CLASS_NAMES)).float()
        figures["segmenter_pixel_fractions"] = {c: round((counts[i] / counts.sum()).item(), 4)
                                                for i, c in enumerate(CLASS_NAMES)}
        figures["segmenter_images_with_class"] = {c: round((seg == i).flatten(1).any(1).float().mean().item(), 4)
                                                  for i, c in enumerate(CLASS_NAMES[2:], start=2)}
    return figures


def _save(module: nn.Module, path: Path) -> None:
    """The state_dict, written to a temporary file and renamed: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.part")
    torch.save(module.state_dict(), tmp)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Retrain the toy world's shipped models.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="weights directory (default: the package's)")
    parser.add_argument("--steps", type=int, default=None, help="steps for every model trained (default: per model)")
    parser.add_argument("--only", choices=NAMES, default=None, help="retrain just this model")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "MANIFEST.json"
    # a full run writes a fresh manifest; --only updates its model's entries in the existing one
    manifest = json.loads(manifest_path.read_text()) if args.only and manifest_path.exists() else {}
    t_start = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - t_start:6.1f}s] {message}", flush=True)

    def record(path: Path, steps: int, seconds: float, metrics: dict) -> None:
        from ganscale.weights import sha256_of

        manifest[path.name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size, "steps": steps,
                               "seconds": round(seconds, 1), **metrics}
        _write_json(manifest_path, manifest)

    def load(cls, filename: str) -> nn.Module | None:
        path = out / filename
        if not path.exists():
            return None
        module = cls()
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        return module.eval()

    names = [args.only] if args.only else NAMES
    log(f"training {', '.join(names)} into {out} with {args.threads} threads")
    for name in names:
        steps = args.steps or STEPS[name]
        t0 = time.time()
        path = out / f"{name}.pt"
        if name in ("probe", "segmenter"):
            module, metrics = (train_probe if name == "probe" else train_segmenter)(steps, log)
            _save(module, path)
            record(path, steps, time.time() - t0, metrics)
            log(f"saved {path.name} ({time.time() - t0:.0f} s): {json.dumps(metrics)}")
            continue
        probe, segmenter = load(ToyProbe, "probe.pt"), load(ToySegmenter, "segmenter.pt")
        pending: list[tuple[int, Path, float]] = []

        def save_checkpoint(step: int, gen: DCGAN, name=name, pending=pending, t0=t0) -> None:
            ckpt = out / f"{name}_step{step:04d}.pt"
            _save(gen, ckpt)
            pending.append((step, ckpt, time.time() - t0))
            log(f"saved checkpoint {ckpt.name}")

        gen = train_gan(name, steps, log, CHECKPOINTS.get(name, ()), save_checkpoint)
        seconds = time.time() - t0
        _save(gen, path)
        for step, ckpt, ckpt_seconds in pending:
            early = DCGAN()
            early.load_state_dict(torch.load(ckpt, weights_only=True), strict=True)
            record(ckpt, step, ckpt_seconds, {"exclude": list(EXCLUDE[name]), **generator_figures(early, probe, segmenter)})
        metrics = {"exclude": list(EXCLUDE[name]), **generator_figures(gen, probe, segmenter)}
        record(path, steps, seconds, metrics)
        log(f"saved {path.name} ({seconds:.0f} s): {json.dumps(metrics)}")
    total = time.time() - t_start
    if not args.only:
        manifest["_run"] = {"total_seconds": round(total, 1), "threads": args.threads, "torch": torch.__version__,
                            "steps_override": args.steps}
        _write_json(manifest_path, manifest)
    log(f"done in {total:.0f} s")


if __name__ == "__main__":
    main()
