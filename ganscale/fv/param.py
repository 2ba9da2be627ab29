"""Image parameterisation: Fourier-space coefficients with a 1/frequency scale (so optimisation
favours low frequencies), decorrelated colour (lucid's ImageNet colour-correlation square root)
and a sigmoid into [0, 1] (Olah et al., Distill 2017)."""

from __future__ import annotations

import torch

# Square root of ImageNet's colour correlation matrix (lucid/lucent), normalised by its largest column norm.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()


def frequencies(h: int, w: int) -> torch.Tensor:
    """|f| of each coefficient of a real 2-D FFT of an h x w image: [h, w // 2 + 1]."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    return 1.0 / torch.clamp(frequencies(h, w), min=1.0 / max(h, w)) ** decay_power * max(h, w) ** 0.5


class FourierImage(torch.nn.Module):
    """B images [B, 3, h, w] in [0, 1] from learnable Fourier coefficients (real and imaginary parts)."""

    def __init__(self, batch: int, h: int, w: int | None = None, sd: float = 0.01, decay_power: float = 1.0,
                 seed: int = 0):
        super().__init__()
        w = w or h
        self.h, self.w = h, w
        generator = torch.Generator().manual_seed(seed)
        self.coefficients = torch.nn.Parameter(torch.randn(batch, 3, h, w // 2 + 1, 2, generator=generator) * sd)
        self.register_buffer("scale", spectrum_scale(h, w, decay_power)[None, None, :, :, None])

    def decorrelated(self) -> torch.Tensor:
        """The image before colour correlation and sigmoid, [B, 3, h, w]."""
        spectrum = torch.view_as_complex((self.coefficients * self.scale).contiguous())
        return torch.fft.irfft2(spectrum, s=(self.h, self.w), norm="ortho") / 4.0

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(correlate_colours(self.decorrelated()))

    @torch.no_grad()
    def set_image(self, images: torch.Tensor, eps: float = 1e-4) -> "FourierImage":
        """Set the coefficients so that forward() returns `images` (in (0, 1)): the inverse map."""
        logits = torch.logit(images.clamp(eps, 1 - eps))
        decorrelated = decorrelate_colours(logits) * 4.0
        spectrum = torch.fft.rfft2(decorrelated, norm="ortho")
        self.coefficients.copy_(torch.view_as_real(spectrum) / self.scale)
        return self


def correlate_colours(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bchw,dc->bdhw", x, COLOR_CORRELATION.to(x))


def decorrelate_colours(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bchw,dc->bdhw", x, torch.linalg.inv(COLOR_CORRELATION).to(x))


def fourier_image(batch: int, size: int, **kwargs) -> FourierImage:
    return FourierImage(batch, size, size, **kwargs)
