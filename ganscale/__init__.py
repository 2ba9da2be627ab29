"""ganscale: what GANs learned, at cluster scale."""

__version__ = "0.1.0"
