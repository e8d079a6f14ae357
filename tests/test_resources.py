import json

import pytest

from zooscope import resources
from zooscope.resources import (
    DEFAULTS, JobResources, esd_flops, estimate, fetch_priority, layer_matrices, model_shards, parse_shard,
    shard_layers, stage_resources, weights_bytes,
)


def test_layer_matrices_counts_kernel_positions_and_orients():
    assert layer_matrices([90, 120]) == (1, 120, 90)
    assert layer_matrices([128, 64, 3, 3]) == (9, 128, 64)
    with pytest.raises(ValueError, match=r"at least 2 dimensions, got \[7\]"):
        layer_matrices([7])


def test_esd_memory_follows_the_largest_tensor_and_runtime_the_total_work():
    big = [4096, 1024]  # 4M elements: 32 bytes each = 128 MiB
    got = estimate("esd", [[10, 10], big])
    assert got.mem_mb == resources.BASE_MB + 128
    flops = 10 * 10**2 + 10 * 10**3 + 4096 * 1024**2 + 10 * 1024**3
    assert got.runtime == resources.BASE_MINUTES + -(-flops // resources.ESD_FLOPS_PER_MINUTE)


def test_fit_memory_follows_the_largest_matrix_eigenvalue_count():
    got = estimate("fit", [[100, 2**20], [64, 32, 3, 3]])
    assert got.mem_mb == resources.BASE_MB + 100 * resources.FIT_BYTES_PER_EIGENVALUE // 2**20 + 1
    assert got.runtime == resources.BASE_MINUTES + 1


def test_a_model_without_layers_gets_the_base():
    assert estimate("fit", []) == JobResources(resources.BASE_MB, resources.BASE_MINUTES)


def test_stage_resources_reads_layers_json_or_falls_back_to_defaults(tmp_path):
    path = tmp_path / "layers.json"
    assert stage_resources("esd", path) == DEFAULTS["esd"]
    path.write_text(json.dumps({"layers": [{"name": "fc", "shape": [4096, 1024]}]}))
    assert stage_resources("esd", path) == estimate("esd", [[4096, 1024]])
    path.write_text("{}")
    with pytest.raises(ValueError, match="layers.json of the fetch stage.*delete it"):
        stage_resources("fit", path)


def test_unknown_stage_is_named():
    with pytest.raises(ValueError, match=r"stage 'plot'; known stages: \['esd', 'fit'\]"):
        stage_resources("plot", "missing.json")


def test_shard_layers_balances_work_longest_first():
    shapes = [[10, 10], [1000, 100], [100, 100], [500, 100], [20, 20]]
    work = [esd_flops(shape) for shape in shapes]
    groups = shard_layers(shapes, 2)
    # N*M^2 + 10*M^3: 2.0e7, 1.5e7, 1.1e7, 8.8e4, 1.1e4 for layers 1, 3, 2, 4, 0. By hand, each onto
    # the lighter group: 1 -> g0 (2.0e7), 3 -> g1 (1.5e7), 2 -> g1 (2.6e7), 4 -> g0, 0 -> g0
    assert work == [11_000, 20_000_000, 11_000_000, 15_000_000, 88_000]
    assert groups == [[0, 1, 4], [2, 3]]
    assert shard_layers(shapes, 1) == [[0, 1, 2, 3, 4]]
    assert shard_layers(shapes[:1], 3) == [[0], [], []]
    with pytest.raises(ValueError, match="at least 1, got 0"):
        shard_layers(shapes, 0)


def test_shard_resources_cover_only_the_shards_layers(tmp_path):
    path = tmp_path / "layers.json"
    shapes = [[4096, 1024], [1024, 1024], [512, 64]]
    path.write_text(json.dumps({"layers": [{"name": f"l{i}", "shape": s} for i, s in enumerate(shapes)]}))
    assert stage_resources("esd", path, shard=(1, 2)) == estimate("esd", [shapes[0]])
    assert stage_resources("esd", path, shard=(2, 2)) == estimate("esd", shapes[1:])
    assert parse_shard("2-of-4") == (2, 4)
    with pytest.raises(ValueError, match="not of the form k-of-K"):
        parse_shard("2of4")


def test_model_shards_column_wins_then_the_size_rule_for_file_sources(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"x" * (5 * 2**20 + 1))
    (tmp_path / "folder").mkdir()
    for i in range(3):
        (tmp_path / "folder" / f"part{i}").write_bytes(b"x" * 2**20)
    assert model_shards(4, tmp_path / "w.safetensors", 1.0) == 4
    assert model_shards(None, tmp_path / "w.safetensors", 1.0) == 6  # ceil(5.000001 MB / 1 MB)
    assert model_shards(None, tmp_path / "w.safetensors", None) == 1
    assert model_shards(None, tmp_path / "folder", 2.0) == 2
    assert model_shards(None, tmp_path / "missing", 1.0) == 1
    assert model_shards(None, None, 1.0) == 1  # a hub, train or random source: no weights on disk yet


def test_weights_bytes_of_a_file_a_folder_and_nothing(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"x" * 1000)
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    (tmp_path / "folder" / "a").write_bytes(b"x" * 300)
    (tmp_path / "folder" / "b").write_bytes(b"x" * 20)
    (tmp_path / "folder" / "sub" / "deep").write_bytes(b"x" * 5)  # a folder's top level only
    assert weights_bytes(tmp_path / "w.bin") == 1000
    assert weights_bytes(tmp_path / "folder") == 320
    assert weights_bytes(tmp_path / "missing") is None


def test_fetch_priority_grows_with_the_weights_and_stays_below_esd(tmp_path):
    sizes = {"small": 2**20, "half": 2**30, "large": 3 * 2**30}
    for name, size in sizes.items():
        with open(tmp_path / name, "wb") as handle:
            handle.truncate(size)  # sparse: the size without the bytes
    small, half, large = (fetch_priority([tmp_path / name]) for name in sizes)
    assert half == 0.5 and large == 0.75  # s / (s + 1 GiB)
    assert 0 < small < half < large < 1
    assert fetch_priority([tmp_path / "small", tmp_path / "half"]) == (2**20 + 2**30) / (2**20 + 2**31)
    assert fetch_priority([]) == 0 and fetch_priority([tmp_path / "missing"]) == 0


def test_an_esd_job_with_a_base_asks_for_its_updates_too():
    from zooscope.resources import DELTA_BYTES_PER_ELEMENT, estimate

    shapes = [[4096, 1024], [1024, 1024]]
    alone, with_base = estimate("esd", shapes), estimate("esd", shapes, with_base=True)
    extra_mb = with_base.mem_mb - alone.mem_mb
    assert extra_mb == pytest.approx(4096 * 1024 * DELTA_BYTES_PER_ELEMENT / 2**20, abs=1)
    assert with_base.runtime > alone.runtime
    assert estimate("fit", shapes, with_base=True) == estimate("fit", shapes)


def test_gram_batches_hold_at_most_threads_layers_and_the_budget_and_keep_the_order():
    assert resources.gram_batches([8, 8, 8, 8, 8], 2, 100) == [[0, 1], [2, 3], [4]]
    assert resources.gram_batches([60, 50, 30, 10], 4, 100) == [[0], [1, 2, 3]]  # 60 + 50 > 100
    assert resources.gram_batches([500, 10], 4, 100) == [[0], [1]]  # a layer above the budget goes alone
    assert resources.gram_batches([], 2, 100) == []
    # the budget: 16 bytes per element of the largest tensor, half the esd estimate's 32
    assert resources.gram_batch_bytes([(4096, 25088), (10, 3, 3, 3)]) == 16 * 4096 * 25088
    assert 2 * resources.gram_batch_bytes([(4096, 25088)]) == resources.ESD_BYTES_PER_ELEMENT * 4096 * 25088
