"""Moved to ganscale.models.upernet (models import no stage); this name stays for study files that
name the plugin `ganscale.dissect.upernet:ade20k_upernet`."""

from ganscale.models.upernet import ade20k_upernet, load_upernet  # noqa: F401
