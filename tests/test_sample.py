"""The sample stage on real local Ray and real zarr stores (local and moto's S3 server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from conftest import toy_study
from ganscale.pipeline import run_stage
from ganscale import sample, schema, sources
from ganscale.errors import GanscaleError
from ganscale.models import registry
from ganscale.study import load_study

ARRAYS = ["seed", "source", "label", "logits", "done"]


def all_arrays(store: str, storage_options=None) -> dict[str, np.ndarray]:
    root = schema.open_store(store, storage_options, mode="r")
    out = {}
    for name, group in root["datasets"].groups():
        for key in ARRAYS:
            out[f"{name}/{key}"] = group[key][:]
        for layer, lg in group["layers"].groups():
            for key in ("activations", "position"):
                out[f"{name}/{layer}/{key}"] = lg[key][:]
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory):
    """The toy study sampled once with one worker: the arrays every other run must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    study = load_study(toy_study(tmp))
    result = run_stage(study, "sample", workers=1)
    return study, result, all_arrays(study.store)


def test_toy_study_shapes_dtypes_and_metadata(reference):
    study, result, arrays = reference
    assert result["computed_chunks"] == 4 + 3 and result["samples_written"] == 350
    probe = registry.probe_entry("toy_probe")
    sizes = {"block1": 16, "block2": 8, "block3": 4}
    for name, n in (("real", 200), ("full", 150)):
        assert arrays[f"{name}/done"].tolist() == [1] * -(-n // 64)
        assert arrays[f"{name}/seed"].dtype == np.int64
        np.testing.assert_array_equal(arrays[f"{name}/seed"], sources.dataset_seeds(7, name, n))
        assert arrays[f"{name}/logits"].shape == (n, 4) and arrays[f"{name}/logits"].dtype == np.float32
        for layer, channels in probe.layers.items():
            acts = arrays[f"{name}/{layer}/activations"]
            pos = arrays[f"{name}/{layer}/position"]
            assert acts.shape == (n, channels) and acts.dtype == np.float32
            assert pos.shape == (n, 2) and pos.dtype == np.int16
            assert pos.min() >= 1 and pos.max() <= sizes[layer] - 2  # away from the border
            assert np.isfinite(acts).all() and (acts >= 0).all()  # post-ReLU
        assert (arrays[f"{name}/source"] == "").all()
    assert set(np.unique(arrays["real/label"])) <= {0, 1, 2, 3}  # toy scenes carry their class
    assert (arrays["full/label"] == -1).all()  # unconditional generator
    root = zarr.open_group(study.store, mode="r")
    assert root.attrs["config_hash"] == study.config_hash()
    assert root["datasets/real"].attrs["resize"] == sources.RESIZE_NOTE
    assert root["datasets/real/layers/block2/activations"].metadata.dimension_names == ("sample", "channel")


def test_stored_vectors_are_the_probe_activations_at_the_stored_positions(reference):
    """Recompute a few samples by hand, outside the stage, and compare."""
    study, _, arrays = reference
    probe = registry.build_probe(study.probe)
    generator = registry.build_generator(study.datasets["full"], "datasets.full")
    index = [0, 77, 149]
    seeds = arrays["full/seed"][index].tolist()
    images, _ = generator.generate(seeds)
    maps, logits = probe(images)
    np.testing.assert_allclose(arrays["full/logits"][index], logits.numpy(), rtol=1e-5, atol=1e-5)
    for layer in study.layers:
        pos = arrays[f"full/{layer}/position"][index]
        expected = maps[layer][torch.arange(3), :, pos[:, 0], pos[:, 1]].numpy()
        np.testing.assert_allclose(arrays[f"full/{layer}/activations"][index], expected, rtol=1e-5, atol=1e-5)


def test_one_and_two_workers_give_bit_identical_arrays(reference, tmp_path):
    _, _, expected = reference
    study = load_study(toy_study(tmp_path))
    result = run_stage(study, "sample", workers=2)
    assert result["workers"] == 2
    assert_same(all_arrays(study.store), expected)


def test_batch_size_does_not_change_the_arrays(reference, tmp_path):
    _, _, expected = reference
    study = load_study(toy_study(tmp_path, sample={"chunk_size": 64, "batch_size": 16}))
    run_stage(study, "sample", workers=1)
    assert_same(all_arrays(study.store), expected)


def test_rerun_skips_completed_chunks_and_changed_dataset_is_resampled(reference, tmp_path):
    path = toy_study(tmp_path)
    study = load_study(path)
    first = run_stage(study, "sample", workers=1)
    again = run_stage(study, "sample", workers=1)
    assert first["computed_chunks"] == 7 and again == {"done": [], "skipped": ["real", "full"]}
    changed = load_study(toy_study(tmp_path, datasets={
        "real": {"kind": "toyworld", "samples": 200},
        "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_no_tree.pt", "samples": 150}}))
    before = all_arrays(study.store)
    result = run_stage(changed, "sample", workers=1)
    assert result["computed_chunks"] == 3 and result["done"] == ["full"]  # only the changed dataset
    after = all_arrays(study.store)
    np.testing.assert_array_equal(after["real/block2/activations"], before["real/block2/activations"])
    assert not np.array_equal(after["full/block2/activations"], before["full/block2/activations"])
    assert {row["dataset"]: row["state"] for row in sample.status(study)} == {
        "real": "complete", "full": "stale (study changed)"}


def test_a_killed_actor_is_restarted_and_every_sample_is_written_once(reference, tmp_path):
    _, _, expected = reference
    study = load_study(toy_study(tmp_path))
    killed = []

    def kill_once(dataset, chunk, worker):
        if not killed:
            killed.append(worker["pid"])
            os.kill(worker["pid"], signal.SIGKILL)

    result = run_stage(study, "sample", workers=1, on_chunk=kill_once)
    assert killed and result["computed_chunks"] == 7
    assert_same(all_arrays(study.store), expected)


def test_a_stopped_driver_resumes_with_only_unfinished_chunks(ray_local, tmp_path):
    slow = {"kind": "generator", "name": "plugins:slow_dcgan", "options": {"delay": 0.3}, "samples": 640}
    path = toy_study(tmp_path, datasets={"real": {"kind": "toyworld", "samples": 64}, "slow": slow},
                     sample={"chunk_size": 32, "batch_size": 32})
    study = load_study(path)
    address = ray_local.get_runtime_context().gcs_address
    assert address
    driver = subprocess.Popen([sys.executable, "-m", "ganscale.cli", "run", str(path), "--address", address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = np.zeros(0)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:  # new datasets are sampled aside, in staging/, until complete
                done = zarr.open_group(study.store, mode="r")["staging/slow/done"][:]
            except (FileNotFoundError, KeyError):
                done = np.zeros(0)
            if done.sum() >= 4:
                break
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    root = zarr.open_group(study.store, mode="r")
    done_before = int(root["staging/slow/done"][:].sum())
    real_done = int(root["staging/real/done" if "real" in root.get("staging", {}) else "datasets/real/done"][:].sum())
    assert 4 <= done_before < 20, "the driver should have been stopped midway"
    assert "slow" not in root.get("datasets", {})  # nothing half-written in datasets/
    assert {r["dataset"]: r["state"] for r in sample.status(study)}["slow"] == "partial"
    result = run_stage(study, "sample", workers=2)
    assert result["computed_chunks"] == (20 - done_before) + (2 - real_done)
    arrays = all_arrays(study.store)
    assert arrays["slow/done"].all()
    np.testing.assert_array_equal(arrays["slow/seed"], sources.dataset_seeds(7, "slow", 640))
    # every sample exactly once: the slow plugin wraps the full generator, so a fresh run of the full
    # generator on the same seeds must give the same arrays
    fresh = load_study(toy_study(tmp_path / "fresh", datasets={
        "real": {"kind": "toyworld", "samples": 64},
        "slow": {"kind": "generator", "name": "plugins:slow_dcgan", "options": {"delay": 0.0}, "samples": 640}},
        sample={"chunk_size": 32, "batch_size": 32}))
    run_stage(fresh, "sample", workers=2)
    assert_same(arrays, all_arrays(fresh.store))


def test_s3_store_equals_local_store(reference, s3_endpoint, tmp_path):
    _, _, expected = reference
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    study = load_study(toy_study(tmp_path, store="s3://ganscale-test/studies/toy.zarr", storage_options=options))
    result = run_stage(study, "sample", workers=2)
    assert result["computed_chunks"] == 7
    assert_same(all_arrays(study.store, options), expected)
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    metadata = fs.cat("ganscale-test/studies/toy.zarr/zarr.json").decode()
    assert "testing" not in metadata  # credentials never reach the store
    assert run_stage(study, "sample", workers=1)["done"] == []


def test_image_folder_dataset(ray_local, tmp_path):
    from ganscale.toyworld.scenes import save_image_folder

    folder = tmp_path / "scenes"
    save_image_folder(folder, range(40))
    path = toy_study(tmp_path, datasets={"photos": {"kind": "images", "path": str(folder), "samples": 30}})
    study = load_study(path)
    run_stage(study, "sample", workers=1)
    root = zarr.open_group(study.store, mode="r")
    group = root["datasets/photos"]
    names = group["source"][:]
    assert len(set(names)) == 30 and all(str(folder) in n and n.endswith(".png") for n in names)
    assert list(names) == sorted(names) and (group["seed"][:] == -1).all()
    assert group["layers/block3/activations"].shape == (30, 128) and group["done"][:].all()


# ---- bad inputs: one clear line, and nothing already written is damaged ----------------------


GOOD = {"full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "samples": 64}}


def add_bad_dataset(tmp_path, dataset: dict) -> str:
    """Sample a good study, then add a bad dataset: the error is one line naming it, and the good
    dataset's arrays are untouched."""
    study = load_study(toy_study(tmp_path, datasets=GOOD))
    run_stage(study, "sample", workers=1)
    before = all_arrays(study.store)
    with pytest.raises(GanscaleError) as info:
        run_stage(load_study(toy_study(tmp_path, datasets={**GOOD, "bad": dataset})), "sample", workers=1)
    after = all_arrays(study.store)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    message = str(info.value)
    assert "\n" not in message and "datasets.bad" in message
    return message


def test_generator_returning_nan(ray_local, tmp_path):
    message = add_bad_dataset(tmp_path, {"kind": "generator", "name": "plugins:nan_dcgan", "samples": 10})
    assert "NaN" in message


def test_generator_returning_wrong_shape(ray_local, tmp_path):
    message = add_bad_dataset(tmp_path, {"kind": "generator", "name": "plugins:wrong_shape_dcgan", "samples": 10})
    assert "shape" in message and "expected" in message


def test_unreadable_image(ray_local, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"this is not a png")
    message = add_bad_dataset(tmp_path, {"kind": "images", "path": str(folder), "samples": 1})
    assert "unreadable image" in message and "a.png" in message


def test_empty_image_folder(ray_local, tmp_path):
    (tmp_path / "empty").mkdir()
    message = add_bad_dataset(tmp_path, {"kind": "images", "path": str(tmp_path / "empty"), "samples": 1})
    assert "no images" in message


def test_wrong_sha256(ray_local, tmp_path):
    message = add_bad_dataset(tmp_path, {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt",
                                         "sha256": "0" * 64, "samples": 10})
    assert "sha256 mismatch" in message


def test_weights_of_the_wrong_model(ray_local, tmp_path):
    message = add_bad_dataset(tmp_path, {"kind": "generator", "name": "dcgan", "weights": "builtin:probe.pt",
                                         "samples": 10})
    assert "do not fit DCGAN" in message


def test_cli_reports_bad_input_in_one_line_with_nonzero_exit(tmp_path):
    from typer.testing import CliRunner

    from ganscale.cli import app

    path = toy_study(tmp_path, layers=["nope"])
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "unknown layer 'nope'" in lines[0]


def test_torchscript_generator(ray_local, tmp_path):
    """Any scripted z -> image module in [-1, 1] is a generator; its images reach the probe in [0, 1]."""
    from torch import nn

    torch.manual_seed(0)
    module = torch.jit.script(nn.Sequential(nn.Linear(16, 3 * 32 * 32), nn.Tanh(), nn.Unflatten(1, (3, 32, 32))))
    module.save(str(tmp_path / "gen.pt"))
    path = toy_study(tmp_path, datasets={"scripted": {"kind": "generator", "name": "torchscript",
                                                      "path": "gen.pt", "z_dim": 16, "samples": 40}})
    study = load_study(path)
    run_stage(study, "sample", workers=1)
    arrays = all_arrays(study.store)
    assert arrays["scripted/done"].all() and arrays["scripted/block3/activations"].shape == (40, 128)
    generator = registry.build_generator(study.datasets["scripted"], "datasets.scripted")
    images, _ = generator.generate(arrays["scripted/seed"][:2].tolist())
    assert 0 <= images.min() and images.max() <= 1
    _, logits = registry.build_probe(study.probe)(images)
    np.testing.assert_allclose(arrays["scripted/logits"][:2], logits.numpy(), rtol=1e-5, atol=1e-5)


def test_damaged_chunks_are_found_named_and_recomputed(reference, tmp_path):
    """A deleted chunk file reads back as zeros and a corrupt one fails to decode: `status --verify`
    names the array and chunk of each, and `run --verify` recomputes exactly those chunks."""
    import shutil

    from typer.testing import CliRunner

    from ganscale.cli import app

    study, _, expected = reference
    copy = tmp_path / "store.zarr"
    shutil.copytree(study.store, copy)
    path = toy_study(tmp_path, store=str(copy))
    assert schema.verify_chunks(zarr.open_group(str(copy), mode="r")["datasets/real"],
                                sample.layout_for(study, "real")) == []
    acts = copy / "datasets/real/layers/block2/activations/c"
    (acts / "1" / "0").unlink()  # chunk 1 gone: zeros on read
    corrupt = copy / "datasets/full/logits/c/0/0"
    corrupt.write_bytes(b"\x00garbage" + corrupt.read_bytes()[8:])
    result = CliRunner().invoke(app, ["status", str(path), "--verify"])
    assert result.exit_code == 1, result.output
    assert "layers/block2/activations chunk 1: checksum mismatch" in result.output
    assert "logits chunk 0: unreadable" in result.output
    result = CliRunner().invoke(app, ["run", str(path), "--verify", "--stages", "sample"])
    assert result.exit_code == 0, result.output
    assert "'computed_chunks': 2" in result.output
    assert_same(all_arrays(str(copy)), expected)
    assert CliRunner().invoke(app, ["status", str(path), "--verify"]).exit_code == 0


def store_digest(path) -> str:
    """sha256 over every file of a local store (names and bytes): 'untouched' means equal digests."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("change", ["probe_weights", "generator_weights", "plugin", "other_study"])
def test_errors_found_on_workers_leave_the_store_untouched(reference, tmp_path, change):
    """Bad inputs that only show once a worker builds the models fail before the first write."""
    import shutil

    study, _, _ = reference
    copy = tmp_path / "store.zarr"
    shutil.copytree(study.store, copy)
    before = store_digest(copy)
    overrides = {
        "probe_weights": {"probe": {"weights": "builtin:dcgan_full.pt"}},
        "generator_weights": {"datasets": {"real": {"kind": "toyworld", "samples": 200},
                                           "full": {"kind": "generator", "name": "dcgan", "samples": 150,
                                                    "weights": "builtin:segmenter.pt"}}},
        "plugin": {"datasets": {"real": {"kind": "toyworld", "samples": 200},
                                "full": {"kind": "generator", "name": "plugins:nan_dcgan", "samples": 150}}},
        "other_study": {"name": "someone-elses"},
    }[change]
    path = toy_study(tmp_path, store=str(copy), **overrides)
    with pytest.raises(GanscaleError) as err:
        run_stage(load_study(path), "sample", workers=1)
    assert "\n" not in str(err.value)
    assert store_digest(copy) == before, f"{change}: the store changed"


def test_bf16_and_channels_last_are_cuda_only_and_enter_the_fingerprint(tmp_path):
    """Refused where they cannot apply (a CPU worker), so a store never claims numerics it was not
    computed in; the fp32 default keeps the fingerprint stores were written with."""
    with pytest.raises(Exception, match="CUDA workers only"):
        load_study(toy_study(tmp_path / "a", sample={"device": "cpu", "precision": "bf16"}))
    fp32 = load_study(toy_study(tmp_path / "b"))
    for settings in ({"precision": "bf16"}, {"channels_last": True}):
        study = load_study(toy_study(tmp_path / "c", sample=settings))
        assert sample.fingerprint(study, "full") != sample.fingerprint(fp32, "full")
        if not torch.cuda.is_available():
            with pytest.raises(GanscaleError, match="sample.precision/channels_last: .*CUDA workers only"):
                sample.ChunkSampler(study)._build()
    assert "numerics" not in sample.numerics(fp32)


def test_garbage_weights_are_refused_without_torch_s_unsafe_advice(tmp_path):
    from ganscale import weights

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(GanscaleError) as err:
        weights.load_state_dict(str(garbage), field="datasets.full.weights")
    message = str(err.value)
    assert message.startswith("datasets.full.weights:") and "weights_only" not in message and "\n" not in message


# ---- planned size, a driver that plans lazily, new datasets aside, damaged metadata ---------------


def test_planned_size_equals_a_hand_computation(tmp_path):
    study = load_study(toy_study(tmp_path))  # real: 200 samples, full: 150; chunks of 64; toy probe
    entry = registry.probe_entry("toy_probe")
    assert {layer: entry.layers[layer] for layer in study.layers} == {"block1": 32, "block2": 64, "block3": 128}
    assert registry.probe_classes(study.probe) == 4
    # per sample: seed int64, source (empty string: a 4-byte length), label int32, logits 4 x float32,
    # per layer activations and pooled C x float32 and position 2 x int16, sharpness float32,
    # colour_hist 4 x 25 x uint32
    per_sample = 8 + 4 + 4 + 4 * 4 + sum(4 * c + 2 * 2 + 4 * c for c in (32, 64, 128)) + 4 + 4 * 4 * 25
    assert per_sample == 2240
    arrays = 4 + 3 * 3 + 2  # seed, source, label, logits; 3 per layer; sharpness, colour_hist
    rows = {r["dataset"]: r for r in sample.planned_size(study)}
    assert rows["real"]["samples"] == 200 and rows["real"]["chunks"] == 4
    assert rows["real"]["arrays"]["layers/block3/activations"] == 200 * 128 * 4
    assert rows["real"]["arrays"]["image/colour_hist"] == 200 * 400
    assert rows["real"]["bytes"] == 200 * per_sample + 4 + 4 * arrays * 4  # + done, checksum [4, 15] uint32
    assert rows["full"]["bytes"] == 150 * per_sample + 3 + 4 * arrays * 3
    assert rows["all"] == {"dataset": "all", "samples": 350, "chunks": 7, "arrays": {},
                           "bytes": rows["real"]["bytes"] + rows["full"]["bytes"]}
    lines = sample.planned_size_lines(sample.planned_size(study))
    assert lines[0].split() == ["sample", "real", "planned:", "200", "samples", "in", "4", "chunks,", "437.7", "KiB"]
    assert lines[-1].endswith("766.0 KiB in all (uncompressed; source estimated)")
    from typer.testing import CliRunner

    from ganscale.cli import app

    result = CliRunner().invoke(app, ["status", str(tmp_path / "study.yaml")])
    assert result.exit_code == 0 and "\n".join(lines) in result.output, result.output


def test_pending_chunks_are_counted_and_walked_without_a_list():
    layout = schema.DatasetLayout(samples=1000, chunk_size=64, num_classes=0, layer_channels={})
    done = np.zeros(layout.n_chunks, bool)
    done[[0, 3, 15]] = True
    pending = sample.Pending(layout.n_chunks, done)
    assert len(pending) == 13 and list(pending) == [i for i in range(16) if i not in (0, 3, 15)]
    assert pending.samples(layout) == 13 * 64 and 15 not in pending and 14 in pending
    done[15] = False  # the short last chunk (1000 - 15 * 64 = 40 samples) pending
    assert sample.Pending(16, done).samples(layout) == 13 * 64 + 40
    assert sample.Pending(16).samples(layout) == 1000 and list(sample.Pending(3)) == [0, 1, 2]
    sample.Pending.BLOCK, block = 4, sample.Pending.BLOCK  # blocks of flags walk the same chunks
    try:
        assert list(sample.Pending(16, done)) == [i for i in range(16) if i not in (0, 3)]
    finally:
        sample.Pending.BLOCK = block


def test_planning_a_hundred_million_samples_allocates_nothing_per_sample(tmp_path):
    """The driver's plan of 10^8 samples (1.6M chunks) and its first tasks: no list per chunk or
    sample (bench figures: see the report of issue 18)."""
    import itertools
    import tracemalloc

    big = {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "samples": 50_000_000}
    study = load_study(toy_study(tmp_path, datasets={"a": big, "b": big}, sample={"max_samples": 200_000_000}))
    tracemalloc.start()
    try:
        plans = sample.plan(study, None)
        assert sum(len(p.pending) for p in plans) == 2 * -(-50_000_000 // 64)
        assert sum(p.pending.samples(p.layout) for p in plans) == 100_000_000
        first = list(itertools.islice(sample.chunk_tasks("a", plans[0].pending), 5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [t.args for t in first] == [("a", i) for i in range(5)]
    assert peak < 20e6, peak


def test_run_on_actors_takes_tasks_only_as_actors_free_up(ray_local):
    from ganscale.runtime import Task, run_on_actors

    class Echo:
        def echo(self, x):
            return x

    taken = []

    def tasks():
        for i in range(10):
            taken.append(i)
            yield Task("echo", (i,), f"task {i}")

    seen = []

    def on_result(task, value):
        seen.append(len(taken))  # tasks taken when this result came

    assert run_on_actors([Echo(), Echo()], tasks(), on_result, in_flight_per_actor=2, collect=False, kill=False) is None
    # 4 in flight at first; each result frees one slot, filled by the next task taken
    assert len(seen) == 10 and all(n <= 4 + k for k, n in enumerate(seen)), seen
    assert run_on_actors([Echo()], (Task("echo", (i,), "t") for i in range(3)), kill=False) == [0, 1, 2]


def store_files(path, skip: str | None = None) -> dict:
    """sha256 of every file of a local store, by path (but those under `skip`)."""
    import hashlib
    from pathlib import Path

    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(Path(path).rglob("*")) if f.is_file()
            and not (skip and str(f.relative_to(path)).startswith(skip))}


def test_a_new_dataset_is_sampled_aside_and_a_bad_image_later_leaves_datasets_untouched(ray_local, tmp_path):
    """A new image dataset whose third chunk holds a corrupt image: the run fails in one line naming
    the file, datasets/ and the root are byte-identical (the dataset was sampled in staging/), and
    once the image is fixed a rerun resumes aside and moves the complete group in."""
    from typer.testing import CliRunner

    from ganscale.cli import app
    from ganscale.toyworld.scenes import save_image_folder

    good = {"real": {"kind": "toyworld", "samples": 64}}
    path = toy_study(tmp_path, datasets=good, sample={"chunk_size": 16, "batch_size": 16})
    study = load_study(path)
    run_stage(study, "sample", workers=1)
    store = study.store
    before = store_files(store, skip="staging")
    folder = tmp_path / "scenes"
    save_image_folder(folder, range(48))
    files = sorted(folder.rglob("*.png"))
    bad, kept = files[40], files[40].read_bytes()  # chunk 2 (samples 32..47): the preflight reads chunk 0
    bad.write_bytes(b"not a png at all")
    path = toy_study(tmp_path, datasets={**good, "photos": {"kind": "images", "path": str(folder), "samples": 48}},
                     sample={"chunk_size": 16, "batch_size": 16, "workers": 1})
    result = CliRunner().invoke(app, ["run", str(path), "--stages", "sample"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and bad.name in errors[0], result.output
    root = zarr.open_group(store, mode="r")
    assert "photos" not in root["datasets"] and "photos" in root["staging"]
    assert store_files(store, skip="staging") == before  # datasets/, the root and its ledger: untouched
    rows = {r["dataset"]: r for r in sample.status(load_study(path))}
    assert rows["photos"]["state"] == "partial" and rows["photos"]["done"] >= 1
    bad.write_bytes(kept)
    result = CliRunner().invoke(app, ["run", str(path), "--stages", "sample"])
    assert result.exit_code == 0, result.output
    root = zarr.open_group(store, mode="r")
    assert "photos" not in root.get("staging", {}) and root["datasets/photos/done"][:].all()
    assert "'computed_chunks': %d" % (3 - rows["photos"]["done"]) in result.output  # resumed aside
    assert root["datasets/photos"].attrs["fingerprint"] == sample.fingerprint(load_study(path), "photos")


@pytest.mark.parametrize("where", ["root", "dataset"])
def test_garbage_metadata_is_named_in_one_line(reference, tmp_path, where):
    import shutil

    from typer.testing import CliRunner

    from ganscale.cli import app

    study, _, _ = reference
    copy = tmp_path / "store.zarr"
    shutil.copytree(study.store, copy)
    target = copy / ("zarr.json" if where == "root" else "datasets/real/zarr.json")
    target.write_text("{ not json")
    path = toy_study(tmp_path, store=str(copy))
    before = store_digest(copy)
    # a plain run of a complete study reads only the root (the ledger); --verify reads every group
    for command in (["status", str(path)], ["run", str(path), "--stages", "sample", "--verify"]):
        result = CliRunner().invoke(app, command)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 1 and len(errors) == 1, result.output
        assert errors[0].startswith(f"error: store: {target}: damaged metadata (JSONDecodeError"), errors[0]
        assert "internal error" not in result.output
    assert store_digest(copy) == before
