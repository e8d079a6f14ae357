import json

import pytest

from zooscope import resources
from zooscope.resources import DEFAULTS, JobResources, estimate, layer_matrices, stage_resources


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
