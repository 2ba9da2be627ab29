"""Files inside registry wheels (`pypi:PACKAGE==VERSION/path`): fetched once, checked, named in errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ganscale import assets, weights
from ganscale.errors import GanscaleError

LFW = "pypi:scikit-image==0.26.0/skimage/data/lfw_subset.npy"
LFW_SHA256 = "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c"


def fetch(uri, sha256=None, field="x"):
    try:
        return weights.resolve(uri, sha256, field=field)
    except assets.RegistryUnreachable as e:
        pytest.skip(f"package registry unreachable: {e}")


def test_a_registry_file_is_fetched_checked_and_then_read_from_the_cache():
    path = fetch(LFW, LFW_SHA256)
    faces = np.load(path)
    assert faces.shape == (200, 25, 25) and 0 <= faces.min() and faces.max() <= 1
    shutil.rmtree(assets.cache_root() / "wheels")  # the extracted, checked file is enough from now on
    assert fetch(LFW, LFW_SHA256) == path


def test_registry_errors_name_the_field():
    with pytest.raises(GanscaleError, match="datasets.a.path: a registry file is written"):
        assets.parse("pypi:scikit-image/skimage/data/lfw_subset.npy", "datasets.a.path")
    with pytest.raises(GanscaleError, match="datasets.a.path: scikit-image==0.26.0 has no file skimage/nope.npy"):
        fetch("pypi:scikit-image==0.26.0/skimage/nope.npy", field="datasets.a.path")
    with pytest.raises(GanscaleError, match="datasets.a.path: sha256 mismatch"):
        fetch(LFW.replace("lfw_subset", "lfw_subset"), "0" * 64, field="datasets.a.path")
