"""zooscope.jacobian.data: the Jacobian stage's data sets (digits test split, .npz, image folders)."""
import numpy as np
import pytest
import torch
from PIL import Image

from zooscope.jacobian.data import DataError, load_samples, subsample_indices
from zooscope.zoo import DEFAULT_SAMPLES, RowError, data_spec, parse_row


def test_digits_is_the_test_split_and_capped():
    full = load_samples(data_spec("digits", samples=10_000))
    assert full.total == 450 and full.x.shape == (450, 64) and full.y.dtype == torch.int64
    np.testing.assert_array_equal(full.indices, np.arange(450))
    capped = load_samples(data_spec("digits", samples=100))
    assert capped.x.shape == (100, 64)
    torch.testing.assert_close(capped.x, full.x[capped.indices])
    # deterministic: the same samples on every call
    np.testing.assert_array_equal(load_samples(data_spec("digits", samples=100)).indices, capped.indices)


def test_subsample_is_a_sorted_seeded_subset():
    picked = subsample_indices(1000, 37)
    assert picked.size == 37 and np.unique(picked).size == 37
    assert np.all(np.diff(picked) > 0) and picked.max() < 1000
    np.testing.assert_array_equal(picked, np.sort(np.random.default_rng(0).permutation(1000)[:37]))
    with pytest.raises(DataError, match="data_samples"):
        subsample_indices(10, 0)


def test_npz_relative_to_the_sheet(tmp_path):
    x = np.arange(24, dtype=np.float64).reshape(6, 2, 2)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]))
    samples = load_samples(data_spec("d.npz", tmp_path))
    assert samples.x.shape == (6, 2, 2) and samples.x.dtype == torch.float32
    np.testing.assert_array_equal(samples.x.numpy(), x)
    np.testing.assert_array_equal(samples.y.numpy(), [0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(DataError, match="no array"):
        load_samples(data_spec("bad.npz", tmp_path))


def test_image_folder_classes_in_sorted_order(tmp_path):
    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for k in range(2):
            Image.fromarray(np.full((3, 4), 51 * (2 * label + k), dtype=np.uint8), mode="L").save(tmp_path / name / f"{k}.png")
    samples = load_samples(data_spec(str(tmp_path)))
    assert samples.x.shape == (4, 1, 3, 4)
    np.testing.assert_array_equal(samples.y.numpy(), [0, 0, 1, 1])
    np.testing.assert_allclose(samples.x[:, 0, 0, 0].numpy(), [0.0, 0.2, 0.4, 0.6], rtol=1e-6)


def test_missing_data_is_an_error(tmp_path):
    with pytest.raises(DataError, match="not 'digits'"):
        load_samples(data_spec("nowhere.npz", tmp_path))


def test_data_columns_are_not_model_options(tmp_path):
    row = {"model": "m", "series": "s", "source": "train:mlp", "accuracy": None, "width": "64",
           "data": "digits", "data_samples": "100"}
    parsed = parse_row(row, tmp_path)
    assert parsed.options == {"width": 64}
    assert (parsed.data.name, parsed.data.path, parsed.data.samples) == ("digits", None, 100)
    assert parse_row({**row, "source": "random:mlp"}, tmp_path).options == {"width": 64}
    relative = parse_row({**row, "data": "sets/d.npz", "data_samples": None}, tmp_path).data
    assert (relative.path, relative.samples) == (tmp_path / "sets" / "d.npz", DEFAULT_SAMPLES)


def test_data_on_a_source_that_cannot_be_rebuilt_is_a_sheet_error(tmp_path):
    """A bare weights file has no architecture; a model folder has one when its config.json names
    a transformers image classifier, the only transformers models the Jacobian stage runs (issue
    14, item 8): a language model, a base model or an unreadable config.json is refused when the
    sheet is read, not by the Jacobian job."""
    row = {"model": "w", "series": "s", "source": "file:w.safetensors", "accuracy": None, "data": "digits"}
    with pytest.raises(RowError, match=r"model 'w': column 'data' .* from a file:, train:, random:, torchvision:, "
                                       r"timm:, hf: source \(file: only as a model folder whose config.json names a "
                                       r"transformers image classifier, architectures ...ForImageClassification: "
                                       r"token inputs are not supported\), not file:w.safetensors"):
        parse_row(row, tmp_path)
    (tmp_path / "folder").mkdir()
    with pytest.raises(RowError, match="not file:folder"):
        parse_row({**row, "source": "file:folder"}, tmp_path)
    config = tmp_path / "folder" / "config.json"
    for refused in ("{}", '{"architectures": ["LlamaForCausalLM"]}', '{"architectures": ["BertModel"]}',
                    '{"architectures": ["ViTForImageClassificationX"]}', '{"architectures": "ViTForImageClassification"}',
                    '{"architectures": [',  "[]"):
        config.write_text(refused)
        with pytest.raises(RowError, match="not file:folder"):
            parse_row({**row, "source": "file:folder"}, tmp_path)
    config.write_text('{"architectures": ["ViTForImageClassification"], "model_type": "vit"}')
    assert parse_row({**row, "source": "file:folder"}, tmp_path).data.name == "digits"
    # hf: is not looked up when the sheet is read (no download then): its Jacobian job decides.
    for source in ("torchvision:resnet18", "timm:resnet18.a1_in1k", "hf:someone/model"):
        assert parse_row({**row, "source": source}, tmp_path).data.name == "digits"


def test_zoo_schema_accepts_data_columns(tmp_path):
    from zooscope.config import ConfigError, load_schema
    from zooscope.zoo import read_zoo_sheet
    from conftest import REPO

    schema = load_schema(REPO / "schemas" / "zoo.schema.yaml")
    header = "model\tseries\tsource\taccuracy\tdata\tdata_samples\n"
    sheet = tmp_path / "zoo.tsv"
    sheet.write_text(header + "a\ts\trandom:mlp\t\tdigits\t100\nb\ts\trandom:mlp\t\t\t\n")
    rows = read_zoo_sheet(sheet, schema)
    assert [(r.data and r.data.name, r.data and r.data.samples) for r in rows] == [("digits", 100), (None, None)]
    sheet.write_text(header + "a\ts\trandom:mlp\t\tdigits\t0\n")
    with pytest.raises(ConfigError, match="data_samples"):
        read_zoo_sheet(sheet, schema)
