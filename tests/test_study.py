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


# --- limits of the study file (issue 18) ------------------------------------------------------------

STUDY_TAIL = ("name: x\nstore: s.zarr\nprobe: {name: toy_probe}\nlayers: [block1]\n"
              "datasets: {real: {kind: toyworld, samples: 10}}\n")


def billion_laughs(indent: str = "") -> str:
    """1 KB of nested anchors that expands to 9^9 (387 million) strings."""
    lines = [f'{indent}a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(8):
        name, prev = chr(98 + i), chr(97 + i)
        lines.append(f"{indent}{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def quick_error_of(path: Path) -> tuple[str, float]:
    import time

    t0 = time.perf_counter()
    message = error_of(path)
    return message, time.perf_counter() - t0


@pytest.mark.parametrize("where", ["top_level", "storage_options", "merge_keys"])
def test_an_alias_bomb_is_refused_in_one_line_at_once(tmp_path, where):
    if where == "top_level":
        text = billion_laughs() + STUDY_TAIL
    elif where == "storage_options":
        text = STUDY_TAIL + "storage_options:\n" + billion_laughs("  ")
    else:  # merge keys multiply the pairs while the YAML is constructed, before anything else walks it
        text = STUDY_TAIL + "m0: &m0 {a: 1, b: 2}\n" + "".join(
            f"m{i + 1}: &m{i + 1} {{<<: [{', '.join([f'*m{i}'] * 9)}]}}\n" for i in range(9))
    assert len(text) < 2000
    message, seconds = quick_error_of(write(tmp_path, text))
    assert message.startswith(str(tmp_path / "study.yaml") + ": ")
    assert "more than the limit of 100,000 values" in message and "alias" in message
    assert seconds < 2


def test_a_recursive_alias_is_refused(tmp_path):
    message, seconds = quick_error_of(write(tmp_path, STUDY_TAIL + "storage_options: &o {x: [1, *o]}\n"))
    assert "recursive" in message and seconds < 2


def test_the_expansion_limit_holds_for_parsed_dicts_too():
    from ganscale.study import parse_study

    level = ["lol"] * 10
    for _ in range(8):
        level = [level] * 10  # shared, as YAML aliases are: 10^9 strings once expanded
    with pytest.raises(GanscaleError, match="more than the limit of 100,000 values"):
        parse_study({"name": "x", "store": "s", "storage_options": {"bomb": level}})


def test_a_study_with_a_few_anchors_loads(tmp_path):
    study = load_study(write(tmp_path, """
name: anchors
store: s.zarr
probe: {name: toy_probe}
layers: &layers [block1, block2]
datasets:
  a: &toy {kind: toyworld, samples: 20}
  b: *toy
  c: {kind: toyworld, samples: 30, exclude: &ex [tree]}
embed: {layers: {block1: &u {n_neighbors: 5}, block2: *u}}
atlas: {icons: {layers: *layers}}
"""))
    assert {n: d.samples for n, d in study.datasets.items()} == {"a": 20, "b": 20, "c": 30}
    assert study.datasets["c"].exclude == ["tree"] and study.embed.layers["block2"].n_neighbors == 5


def test_an_oversized_study_file_is_refused_before_parsing(tmp_path):
    path = write(tmp_path, STUDY_TAIL + "#" + "x" * (1 << 20) + "\n")
    message = error_of(path)
    assert message.startswith(f"{path}: ") and "larger than the limit of 1,048,576 bytes (1 MiB)" in message


def test_deep_nesting_is_one_line(tmp_path):
    message = error_of(write(tmp_path, STUDY_TAIL + "storage_options: {x: " + "[" * 5000 + "]" * 5000 + "}\n"))
    assert "nested too deeply" in message or "more than the limit" in message


def test_sample_max_samples(tmp_path):
    many = {f"d{i}": {"kind": "toyworld", "samples": 10_000_000} for i in range(3)}
    message = error_of(toy_study(tmp_path, datasets=many))
    assert message == (f"{tmp_path / 'study.yaml'}: sample.max_samples: the study asks for 30,000,000 samples "
                       "(3 datasets), above the limit 20,000,000; raise sample.max_samples to allow it")
    message = error_of(toy_study(tmp_path, datasets={"real": {"kind": "toyworld", "samples": 1_000_000_000}}))
    assert message.endswith("datasets.real.samples: 1,000,000,000 samples, above the limit 20,000,000; "
                            "raise sample.max_samples to allow it")
    study = load_study(toy_study(tmp_path, datasets=many, sample={"max_samples": 30_000_000}))
    assert sum(d.samples for d in study.datasets.values()) == 30_000_000
    message = error_of(toy_study(tmp_path, sample={"max_samples": 300}))  # 200 + 150
    assert "asks for 350 samples (2 datasets), above the limit 300" in message


def test_max_samples_is_not_part_of_the_config_hash(tmp_path):
    a = load_study(toy_study(tmp_path))
    assert a.config_hash() == load_study(toy_study(tmp_path, sample={"max_samples": 10_000})).config_hash()


# --- names that become store keys ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["real\n", "zarr.json", ".hidden", "__init", "x.json", ".zattrs", "c2st",
                                  "a/b", "", "-x"])
def test_dataset_names_that_are_not_safe_store_keys_are_refused(tmp_path, name):
    message = error_of(toy_study(tmp_path, datasets={name: {"kind": "toyworld", "samples": 10}}))
    assert "datasets: dataset name" in message and repr(name) in message


@pytest.mark.parametrize("name", ["toy\n", "zarr.json", ".hidden"])
def test_study_names_are_checked_in_full(tmp_path, name):
    message = error_of(toy_study(tmp_path, name=name))
    assert message.startswith(f"{tmp_path / 'study.yaml'}: name: name {name!r}")


def test_dissected_layer_names_are_store_keys(tmp_path):
    datasets = {"full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "samples": 10}}
    message = error_of(toy_study(tmp_path, datasets=datasets, dissect={"layers": ["zarr.json"]}))
    assert "dissect.layers" in message and "reserved" in message
    assert load_study(toy_study(tmp_path, datasets=datasets, dissect={"layers": ["layer2"]})).dissect.layers


def test_a_yaml_key_that_is_not_a_string_becomes_its_json_name(tmp_path):
    assert list(load_study(write(tmp_path, STUDY_TAIL.replace("real:", "1:"))).datasets) == ["1"]


def test_good_names_still_load(tmp_path):
    datasets = {n: {"kind": "toyworld", "samples": 5} for n in ("real", "Real_2", "v1.5-b", "json")}
    assert set(load_study(toy_study(tmp_path, datasets=datasets)).datasets) == set(datasets)


# --- secrets: what of storage_options may reach the store --------------------------------------------

SECRETS = ("SECRET1", "SECRET2", "SECRET3", "SECRET4", "SECRET5")


def secret_options(endpoint: str = "http://user:SECRET1@host:9000") -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint, "headers": {"X-Custom-Auth": "SECRET2"}, "verify": False},
            "endpoint_url": "https://host:9000/?X-Amz-Signature=SECRET3&region=eu",
            "config_kwargs": {"retries": {"max_attempts": 1}, "user_agent_extra": "SECRET4", "connect_timeout": 2},
            "profile": "SECRET5", "anon": False, "skip_instance_cache": True}


def test_stored_keeps_the_allowlist_and_redacts_the_rest(tmp_path):
    study = load_study(toy_study(tmp_path, storage_options=secret_options()))
    assert study.storage_options == secret_options()  # what fsspec gets is untouched
    stored = study.stored()["storage_options"]
    assert stored == {"client_kwargs": {"endpoint_url": "http://<redacted>@host:9000", "headers": "<redacted>",
                                        "verify": False},
                      "endpoint_url": "https://host:9000/?X-Amz-Signature=<redacted>&region=eu",
                      "config_kwargs": {"retries": {"max_attempts": 1}, "user_agent_extra": "<redacted>",
                                        "connect_timeout": 2},
                      "profile": "<redacted>", "anon": False, "skip_instance_cache": True}
    rotated = secret_options("http://user:ROTATED@host:9000")
    rotated["config_kwargs"]["user_agent_extra"] = "ROTATED"
    assert load_study(toy_study(tmp_path, storage_options=rotated)).config_hash() == study.config_hash()
    assert not any(secret in repr(study) or secret in str(study) for secret in SECRETS)  # tracebacks, Ray errors
    plain = load_study(toy_study(tmp_path, storage_options={}))
    assert plain.stored() == plain.model_dump(mode="json")  # nothing to redact: the same hash as before


@pytest.mark.parametrize("options", [{"account_key": "SECRET1"}, {"sas_token": "SECRET1"},
                                     {"client_kwargs": {"headers": {"Authorization": "Bearer SECRET1"}}},
                                     {"headers": {"authorization": "SECRET1"}},
                                     {"s3_additional_kwargs": [1, "x", [{"aws_secret_access_key": "SECRET1"}]]}])
def test_well_known_credentials_are_refused_without_printing_them(tmp_path, options):
    message = error_of(toy_study(tmp_path, storage_options=options))
    assert "storage_options" in message and "looks like a credential" in message and "SECRET1" not in message


def _files_hold_secrets(files: dict[str, bytes]) -> list[str]:
    return [f"{name}: {secret}" for name, data in files.items() for secret in SECRETS if secret.encode() in data]


def test_no_secret_of_storage_options_reaches_a_local_store(tmp_path):
    from ganscale import sample, schema

    study = load_study(toy_study(tmp_path, storage_options=secret_options()))
    root = schema.open_store(study.store)  # local: fsspec's options are not used
    sample.prepare_store(study, root, sample.plan(study, root, check_inputs=False))
    files = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "study.yaml"}
    assert any(name.endswith("store.zarr/zarr.json") for name in files) and len(files) > 5
    assert _files_hold_secrets(files) == []
    attrs = schema.open_store(study.store, mode="r").attrs  # read fresh: the ledger wrote them
    assert attrs["study"]["storage_options"]["client_kwargs"]["endpoint_url"] == "http://<redacted>@host:9000"
    assert attrs["config_hash"] == study.config_hash()


def test_no_secret_of_storage_options_reaches_an_s3_store(s3_endpoint, tmp_path):
    import s3fs

    from ganscale import sample, schema

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "skip_instance_cache": True,
               "config_kwargs": {"user_agent_extra": "SECRET4"}}  # a real option that is not on the allowlist
    study = load_study(toy_study(tmp_path, store="s3://ganscale-test/secrets.zarr", storage_options=options))
    root = schema.open_store(study.store, study.storage_options)
    sample.prepare_store(study, root, sample.plan(study, root, check_inputs=False))
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    names = fs.find("ganscale-test/secrets.zarr") + fs.find("ganscale-test/secrets.zarr.leases")
    files = {name: fs.cat(name) for name in names}
    assert "ganscale-test/secrets.zarr/zarr.json" in files and len(files) > 5
    assert _files_hold_secrets(files) == []
    stored = schema.open_store(study.store, study.storage_options, mode="r").attrs["study"]["storage_options"]
    assert stored == {**options, "config_kwargs": {"user_agent_extra": "<redacted>"}}


def test_scrub_url():
    from ganscale.study import scrub_url

    assert scrub_url("https://u:p@host:1/a?b=c%2Fd&X-Amz-Credential=x") == \
        "https://<redacted>@host:1/a?b=c%2Fd&X-Amz-Credential=<redacted>"
    for unchanged in ("https://host/w.pth?download=a/b c", "s3://bucket/key@2x.png", "/local/path", "builtin:probe.pt"):
        assert scrub_url(unchanged) == unchanged


def test_error_lines_lose_the_credentials_of_urls():
    from ganscale.errors import describe

    line, code = describe(OSError('Could not connect to the endpoint URL: "http://user:SECRET1@host:9000/b"'))
    assert "SECRET1" not in line and "http://<redacted>@host:9000/b" in line and code == 1
