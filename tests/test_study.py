"""Study validation: every bad input is one clear line that names the field or file."""

from pathlib import Path

import pytest
import yaml

from conftest import toy_study
from ganscale.errors import GanscaleError
from ganscale.study import load_study


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(GanscaleError) as info:
        load_study(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_toy_study_loads_with_defaults_and_absolute_paths(tmp_path):
    study = load_study(toy_study(tmp_path, store="rel/store.zarr"))
    assert study.store == str((tmp_path / "rel/store.zarr").resolve())
    assert study.probe.weights == "builtin:probe.pt"  # the toy probe ships its weights
    assert study.datasets["full"].kind == "generator" and study.datasets["real"].samples == 200
    assert study.config_hash() == load_study(toy_study(tmp_path, store="rel/store.zarr")).config_hash()


def test_issue_example_study_parses(tmp_path):
    weights = tmp_path / "inception5h.pth"
    weights.write_bytes(b"x")
    (tmp_path / "sngan.pt").write_bytes(b"x")
    (tmp_path / "biggan-deep-256").mkdir()
    path = write(tmp_path, f"""
name: biggan-vs-imagenet
store: s3://bucket/studies/biggan.zarr
probe: {{name: inception_v1, weights: {weights}, sha256: "abc"}}
layers: [mixed3a, mixed3b, mixed4a, mixed4b, mixed4c, mixed4d, mixed4e, mixed5a, mixed5b]
datasets:
  imagenet: {{kind: images, path: s3://bucket/imagenet/train, samples: 100000}}
  biggan:   {{kind: generator, name: biggan, weights: {tmp_path}/biggan-deep-256, truncation: 0.4, samples: 100000}}
  sngan:    {{kind: generator, name: torchscript, path: sngan.pt, z_dim: 128, samples: 100000}}
seed: 0
""")
    study = load_study(path)
    assert len(study.layers) == 9 and study.datasets["sngan"].path == str(tmp_path / "sngan.pt")


def test_malformed_yaml(tmp_path):
    message = error_of(write(tmp_path, "name: x\nlayers: [block1\n"))
    assert "malformed YAML" in message and "line" in message


def test_unknown_key_is_named(tmp_path):
    path = toy_study(tmp_path, datasets={"real": {"kind": "toyworld", "samples": 10, "colour": "red"}})
    assert "datasets.real.colour: unknown key" in error_of(path)


def test_unknown_top_level_key(tmp_path):
    assert "storee: unknown key" in error_of(toy_study(tmp_path, storee="x"))


def test_wrong_type_is_named(tmp_path):
    path = toy_study(tmp_path, datasets={"real": {"kind": "toyworld", "samples": "many"}})
    assert "datasets.real.samples" in error_of(path)


def test_unknown_layer(tmp_path):
    message = error_of(toy_study(tmp_path, layers=["block1", "mixed4c"]))
    assert "unknown layer 'mixed4c'" in message and "block1" in message


def test_unknown_generator_and_dataset_kind(tmp_path):
    path = toy_study(tmp_path, datasets={"g": {"kind": "generator", "name": "stylegan9", "samples": 5}})
    assert "datasets.g.name: unknown generator 'stylegan9'" in error_of(path)
    path = toy_study(tmp_path, datasets={"g": {"kind": "video", "samples": 5}})
    assert "datasets.g" in error_of(path)


def test_missing_weights_file(tmp_path):
    path = toy_study(tmp_path, datasets={"g": {"kind": "generator", "name": "dcgan", "weights": "nope.pt",
                                               "samples": 5}})
    message = error_of(path)
    assert "datasets.g.weights" in message and "not found" in message and "nope.pt" in message


def test_missing_probe_weights(tmp_path):
    message = error_of(toy_study(tmp_path, probe={"name": "toy_probe", "weights": "/no/probe.pt"}))
    assert "probe.weights" in message and "/no/probe.pt" in message


def test_required_generator_fields(tmp_path):
    path = toy_study(tmp_path, datasets={"g": {"kind": "generator", "name": "torchscript", "samples": 5}})
    assert "datasets.g.path: required" in error_of(path)


def test_credentials_in_storage_options_are_refused(tmp_path):
    path = toy_study(tmp_path, storage_options={"key": "AKIA...", "client_kwargs": {}})
    message = error_of(path)
    assert "storage_options" in message and "environment" in message and "AKIA" not in message


def test_batch_size_larger_than_chunk(tmp_path):
    assert "batch_size" in error_of(toy_study(tmp_path, sample={"chunk_size": 16, "batch_size": 32}))


def test_missing_study_file(tmp_path):
    assert "study file not found" in error_of(tmp_path / "absent.yaml")


def test_not_a_mapping(tmp_path):
    assert "mapping" in error_of(write(tmp_path, "- a\n- b\n"))


def test_demo_study_is_valid(tmp_path):
    from ganscale.cli import demo_study_path

    study = load_study(demo_study_path(tmp_path))
    assert set(study.datasets) == {"real", "full", "no_tree"}
    assert yaml.safe_load((tmp_path / "demo.yaml").read_text())["store"] == "demo.zarr"


def test_a_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("name: x\nstore: s.zarr\nprobe: {name: toy_probe}\nlayers: [block1]\ndatasets:\n"
                    "  real: {kind: toyworld, samples: 10}\n  real: {kind: toyworld, samples: 20}\n")
    with pytest.raises(GanscaleError, match="line 7.*key 'real' is given twice"):
        load_study(path)


def test_a_store_path_through_a_file_is_bad_input_in_one_line(tmp_path):
    """A store path that runs through a regular file is a wrong path (exit 2), and the file is left
    alone; environment failures (exit 1) are in tests/test_errors.py."""
    from typer.testing import CliRunner

    from ganscale.cli import app

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = toy_study(tmp_path, store=str(blocker / "store.zarr"))
    result = CliRunner().invoke(app, ["run", str(path), "--stages", "sample"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "a file is in the way" in errors[0] and "Traceback" not in result.output
    assert blocker.read_text() == "not a folder"
