"""Image parameterisation (Olah et al., Distill 2017; lucid/lucent's `fft_image` + `to_valid_rgb`):
each of B images is a set of learnable real-FFT coefficients per colour channel, scaled by
1 / max(|f|, 1/N)^decay_power with |f| = sqrt(fx^2 + fy^2) the coefficient's spatial frequency (so
every frequency band changes at a similar rate under Adam and low frequencies dominate), brought to
pixels by an orthonormal inverse FFT, mixed from decorrelated to RGB colour by the square root of
ImageNet's colour correlation matrix, and squashed into (0, 1) by a sigmoid.

`FourierImage.set_image` is the inverse map (image -> coefficients), so any image in (0, 1) can be
a starting point, and the parameterisation round-trips exactly.
"""

from __future__ import annotations

import torch

# Square root (from the SVD) of ImageNet's RGB colour correlation matrix, as in lucid and lucent.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                           [0.27, 0.00, -0.05],
                                           [0.27, -0.09, 0.03]])
# ... normalised by its largest column norm, so no decorrelated channel is amplified.
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()
# lucid divides the inverse FFT by this constant (less saturated images at the start).
MAGIC = 4.0


def frequencies(h: int, w: int) -> torch.Tensor:
    """|f| = sqrt(fx^2 + fy^2), in cycles per pixel, of each coefficient of a real 2-D FFT of an
    h x w image: [h, w // 2 + 1]."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """1 / max(|f|, 1 / max(h, w))^decay_power: [h, w // 2 + 1]. With the orthonormal inverse FFT
    a coefficient of frequency f moves the pixels by ~1/(f N), the same at any image size."""
    return 1.0 / torch.clamp(frequencies(h, w), min=1.0 / max(h, w)) ** decay_power


def correlate_colours(x: torch.Tensor) -> torch.Tensor:
    """Decorrelated colour [B, 3, H, W] -> RGB (before the sigmoid)."""
    return torch.einsum("bchw,dc->bdhw", x, COLOR_CORRELATION.to(x))


def decorrelate_colours(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `correlate_colours`."""
    return torch.einsum("bchw,dc->bdhw", x, torch.linalg.inv(COLOR_CORRELATION.double()).to(x))


class FourierImage(torch.nn.Module):
    """B images [B, 3, h, w] in (0, 1) from learnable Fourier coefficients
    `coefficients` [B, 3, h, w // 2 + 1, 2] (real and imaginary parts), initialised N(0, sd^2)."""

    def __init__(self, batch: int, h: int, w: int | None = None, sd: float = 0.01, decay_power: float = 1.0,
                 decorrelate: bool = True, seed: int = 0):
        super().__init__()
        w = w or h
        self.h, self.w, self.decorrelate = h, w, decorrelate
        generator = torch.Generator().manual_seed(seed)
        self.coefficients = torch.nn.Parameter(torch.randn(batch, 3, h, w // 2 + 1, 2, generator=generator) * sd)
        self.register_buffer("scale", spectrum_scale(h, w, decay_power)[None, None, :, :, None])

    @property
    def batch(self) -> int:
        return self.coefficients.shape[0]

    def logits(self) -> torch.Tensor:
        """The image before the sigmoid, [B, 3, h, w]."""
        spectrum = torch.view_as_complex((self.coefficients * self.scale).contiguous())
        x = torch.fft.irfft2(spectrum, s=(self.h, self.w), norm="ortho") / MAGIC
        return correlate_colours(x) if self.decorrelate else x

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits())

    @torch.no_grad()
    def set_image(self, images: torch.Tensor, eps: float = 1e-6) -> "FourierImage":
        """Set the coefficients so that forward() returns `images` [B, 3, h, w] (values clamped
        into [eps, 1 - eps]): logit, inverse colour mixing, forward FFT, divide by the scale."""
        x = torch.logit(images.to(self.coefficients).clamp(eps, 1 - eps))
        if self.decorrelate:
            x = decorrelate_colours(x)
        spectrum = torch.fft.rfft2(x * MAGIC, s=(self.h, self.w), norm="ortho")
        self.coefficients.copy_(torch.view_as_real(spectrum) / self.scale)
        return self


def fourier_image(batch: int, size: int, **kwargs) -> FourierImage:
    """`batch` square images of side `size` (kwargs: sd, decay_power, decorrelate, seed)."""
    return FourierImage(batch, size, size, **kwargs)


def image_to_coefficients(images: torch.Tensor, **kwargs) -> torch.Tensor:
    """The Fourier coefficients [B, 3, h, w // 2 + 1, 2] whose image is `images` [B, 3, h, w]."""
    b, _, h, w = images.shape
    return FourierImage(b, h, w, **kwargs).set_image(images).coefficients.detach()
