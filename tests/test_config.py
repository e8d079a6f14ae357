import pytest
import yaml

from conftest import REPO
from zooscope.config import ConfigError, load_schema, read_zoo_sheet, validate_config

CONFIG_SCHEMA = load_schema(REPO / "schemas" / "config.schema.yaml")
ZOO_SCHEMA = load_schema(REPO / "schemas" / "zoo.schema.yaml")


def write_sheet(tmp_path, text):
    path = tmp_path / "zoo.tsv"
    path.write_text(text.replace("|", "\t"))
    return path


def test_shipped_config_is_valid_and_defaults_are_filled():
    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()), CONFIG_SCHEMA)
    assert config["zoo"] == "zoos/demo.tsv"
    assert validate_config({"zoo": "z.tsv"}, CONFIG_SCHEMA)["fit"] == {"floor": 1e-5, "kind": "pl"}
    assert validate_config({"zoo": "z.tsv"}, CONFIG_SCHEMA)["min_evals"] == 50


def test_bad_config_names_the_source_and_each_field():
    with pytest.raises(ConfigError) as info:
        validate_config({"zoo": "z.tsv", "conv2d": "blocks", "min_evals": 0, "typo": 1}, CONFIG_SCHEMA,
                        source="config.yaml")
    message = str(info.value)
    assert message.startswith("config.yaml")
    assert "field 'conv2d'" in message and "'blocks'" in message
    assert "field 'min_evals'" in message
    assert "'typo' was unexpected" in message
    with pytest.raises(ConfigError, match="'zoo' is a required property"):
        validate_config({}, CONFIG_SCHEMA)


def test_zoo_sheet_rows_and_options(tmp_path):
    path = write_sheet(tmp_path, "# a comment\nmodel|series|source|accuracy|width\n"
                                 "a|s|train:mlp||64\nb|s|file:w.safetensors|71.5|\n")
    rows = read_zoo_sheet(path, ZOO_SCHEMA)
    assert rows == [
        {"model": "a", "series": "s", "source": "train:mlp", "accuracy": None, "width": "64"},
        {"model": "b", "series": "s", "source": "file:w.safetensors", "accuracy": 71.5, "width": None},
    ]


@pytest.mark.parametrize("row, fragments", [
    ("../evil|s|train:mlp|", ["row 2", "model '../evil'", "field 'model'"]),
    ("a/b|s|train:mlp|", ["row 2", "field 'model'"]),
    ("a|s|hub:x|", ["row 2", "field 'source'"]),
    ("a|s|train:mlp|high", ["row 2", "field 'accuracy'", "'high'"]),
    ("a|s|train:mlp|120", ["row 2", "field 'accuracy'"]),
    ("a||train:mlp|", ["row 2", "'series'"]),
])
def test_bad_rows_name_the_file_row_and_field(tmp_path, row, fragments):
    path = write_sheet(tmp_path, "model|series|source|accuracy\n" + row + "\n")
    with pytest.raises(ConfigError) as info:
        read_zoo_sheet(path, ZOO_SCHEMA)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_duplicate_models_missing_columns_and_missing_sheet(tmp_path):
    path = write_sheet(tmp_path, "model|series|source|accuracy\na|s|train:mlp|\na|s|train:mlp|\n")
    with pytest.raises(ConfigError, match="row 3 .*duplicate model id, first used in row 2"):
        read_zoo_sheet(path, ZOO_SCHEMA)
    path = write_sheet(tmp_path, "model|source\na|train:mlp\n")
    with pytest.raises(ConfigError, match="missing column\\(s\\) series, accuracy"):
        read_zoo_sheet(path, ZOO_SCHEMA)
    with pytest.raises(ConfigError, match="does not exist.*--config zoo=PATH"):
        read_zoo_sheet(tmp_path / "nope.tsv", ZOO_SCHEMA)


def test_base_column_errors_name_the_row(tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")
    path = write_sheet(tmp_path, "model|series|source|accuracy|base\n"
                                 "a|s|train:mlp||\n"
                                 "b|s|train:mlp||a\n"
                                 "c|s|train:mlp||nobody\n"
                                 "d|s|train:mlp||d\n"
                                 "e|s|train:mlp||f\n"
                                 "f|s|train:mlp||e\n"
                                 "g|s|peft:lora||\n"
                                 "h|s|file:lora||\n")
    with pytest.raises(ConfigError) as info:
        read_zoo_sheet(path, ZOO_SCHEMA)
    message = str(info.value)
    assert "row 4 (model 'c'): column 'base' names 'nobody', which is no model of this sheet" in message
    assert "row 5 (model 'd'): column 'base' names the model itself" in message
    assert "row 6 (model 'e'): its bases form a cycle (e -> f -> e)" in message
    assert "row 7 (model 'f'): its bases form a cycle (f -> e -> f)" in message
    assert "row 8 (model 'g'): an adapter (peft: source or adapter folder) needs" in message
    assert "row 9 (model 'h'): an adapter" in message
    assert "model 'b'" not in message and "model 'a'" not in message


def test_a_chain_of_bases_is_valid(tmp_path):
    path = write_sheet(tmp_path, "model|series|source|accuracy|base\n"
                                 "a|s|train:mlp||\nb|s|train:mlp||a\nc|s|train:mlp||b\n")
    assert [row["base"] for row in read_zoo_sheet(path, ZOO_SCHEMA)] == [None, "a", "b"]
