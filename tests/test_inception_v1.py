"""InceptionV1 (Lucid's inception5h): lucent-compatible parameters, layer shapes, and weights
loaded strictly from a file, s3:// and http://, checked against their sha256.

The CPU runs this network at ~9 images/s, so every forward pass here is one or two images.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from ganscale.errors import GanscaleError
from ganscale.models.inception_v1 import InceptionV1, load_inception_v1
from ganscale.weights import sha256_of

# {state_dict key: shape} of lucent's own class, lucent.modelzoo.inceptionv1.InceptionV1()
# (github.com/greentfrapp/lucent at commit 6123386ceb1dd5830724d6519bb6d8eb9fc542a0), dumped
# outside this repository; the published inception5h.pth has exactly these keys.
LUCENT_KEYS = Path(__file__).parent / "data" / "lucent_inceptionv1_keys.json"

SPATIAL = {"mixed3a": 28, "mixed3b": 28, "mixed4a": 14, "mixed4b": 14, "mixed4c": 14,
           "mixed4d": 14, "mixed4e": 14, "mixed5a": 7, "mixed5b": 7}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random-init model, its weights file and sha256, and its logits for one fixed image."""
    torch.manual_seed(0)
    model = InceptionV1().eval()
    path = tmp_path_factory.mktemp("weights") / "inception5h.pth"
    torch.save(model.state_dict(), path)
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(image)
    return {"model": model, "path": path, "sha256": sha256_of(path), "image": image, "logits": logits}


def logits_of(model: InceptionV1, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(image)


def error_of(**kwargs) -> str:
    with pytest.raises(GanscaleError) as info:
        load_inception_v1(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GANSCALE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---- architecture -----------------------------------------------------------------------


def test_state_dict_keys_and_shapes_equal_lucents(saved):
    expected = json.loads(LUCENT_KEYS.read_text())
    got = {key: list(value.shape) for key, value in saved["model"].state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same registration order too


def test_class_attributes_and_parameterless_layers():
    model = InceptionV1()
    assert InceptionV1.input_size == 224 and InceptionV1.num_classes == 1008
    assert list(InceptionV1.layers) == list(SPATIAL)
    for name in InceptionV1.layers:
        assert list(getattr(model, name).parameters()) == []


def test_layer_activations_and_logits_shapes():
    model = InceptionV1().eval()
    seen: dict[str, torch.Tensor] = {}
    for name in InceptionV1.layers:
        getattr(model, name).register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out))
    images = torch.rand(2, 3, 224, 224)
    logits = logits_of(model, images)
    assert logits.shape == (2, 1008)
    assert list(seen) == list(InceptionV1.layers)
    for name, channels in InceptionV1.layers.items():
        side = SPATIAL[name]
        assert seen[name].shape == (2, channels, side, side), name
        assert seen[name].min() >= 0  # post-ReLU
    # each image's logits do not depend on the rest of the batch
    torch.testing.assert_close(logits_of(model, images[1:]), logits[1:])


def test_wrong_input_size_is_refused():
    with pytest.raises(ValueError, match="224"):
        InceptionV1()(torch.rand(1, 3, 256, 256))


# ---- weights ------------------------------------------------------------------------------


def test_random_init_without_weights():
    model = load_inception_v1(None)
    assert isinstance(model, InceptionV1) and not model.training


def test_weights_file_round_trip(saved):
    model = load_inception_v1(str(saved["path"]), saved["sha256"])
    assert not model.training
    assert torch.equal(logits_of(model, saved["image"]), saved["logits"])


def test_wrong_sha256_is_refused(saved):
    assert "sha256" in error_of(weights=str(saved["path"]), sha256="0" * 64)


def test_missing_file(tmp_path):
    message = error_of(weights=str(tmp_path / "nope.pth"))
    assert "not found" in message and "probe.weights" in message


def test_key_mismatch_names_the_keys(saved, tmp_path):
    state = dict(saved["model"].state_dict())
    del state["mixed4c_3x3_pre_relu_conv.weight"]
    state["fc.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    message = error_of(weights=str(path))
    assert "mixed4c_3x3_pre_relu_conv.weight" in message and "fc.weight" in message


def test_s3_round_trip(saved, s3_endpoint, cache, monkeypatch):
    import s3fs

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    s3fs.S3FileSystem(**options).put(str(saved["path"]), "ganscale-test/probe/inception5h.pth")

    model = load_inception_v1("s3://ganscale-test/probe/inception5h.pth", saved["sha256"], storage_options=options)
    assert torch.equal(logits_of(model, saved["image"]), saved["logits"])
    assert sha256_of(next(cache.rglob("inception5h.pth"))) == saved["sha256"]  # cached by sha256

    message = error_of(weights="s3://ganscale-test/probe/missing.pth", storage_options=options)
    assert "not found" in message


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """A local HTTP server serving a folder (https:// cannot be tested offline; same code path)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_round_trip(saved, http_root, cache):
    root, url = http_root
    (root / "inception5h.pth").write_bytes(saved["path"].read_bytes())

    model = load_inception_v1(f"{url}/inception5h.pth", saved["sha256"])
    assert torch.equal(logits_of(model, saved["image"]), saved["logits"])
    assert sha256_of(next(cache.rglob("inception5h.pth"))) == saved["sha256"]

    assert "sha256" in error_of(weights=f"{url}/inception5h.pth", sha256="f" * 64)
    assert "cannot download" in error_of(weights=f"{url}/missing.pth")
