import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from zooscope.config import (
    RunConfig,
    ConfigError, EsdConfig, EsdSettings, FitSettings, JacobianSettings, Threads, config_table, load_schema, run_config,
    schema_keys, validate_config,
)
from zooscope.sources.selection import Selection
from zooscope.zoo import DataSpec, Source, ZooRow, read_zoo_sheet

CONFIG_SCHEMA = load_schema(REPO / "schemas" / "config.schema.yaml")
ZOO_SCHEMA = load_schema(REPO / "schemas" / "zoo.schema.yaml")


def write_sheet(tmp_path, text):
    path = tmp_path / "zoo.tsv"
    path.write_text(text.replace("|", "\t"))
    return path


def test_shipped_config_is_valid_and_defaults_are_filled():
    shipped = run_config(yaml.safe_load((REPO / "config.yaml").read_text()), CONFIG_SCHEMA)
    assert shipped.zoo == Path("zoos/demo.tsv")
    defaults = run_config({"zoo": "z.tsv"}, CONFIG_SCHEMA)
    assert defaults.fit == FitSettings(floor=1e-5, kind="pl", min_evals=50, bootstrap=100, level=0.95, gof=100,
                                       alternatives=True, fingers=None)
    assert defaults.esd == EsdConfig(EsdSettings("slices", "none", None, False), device="cpu", shard_mb=None)
    assert shipped.esd.settings.randomize is True  # off by default, on for the demo (its report shows it)
    assert defaults.jacobian.memory_budget == 1024 * 2**20


def test_the_schema_defaults_are_the_dataclasses_defaults():
    """One definition of every default: the schema's equal the settings classes' (the library's)."""
    schema_defaults = dict((name, sub["default"]) for name, sub in schema_keys(CONFIG_SCHEMA) if "default" in sub)
    objects = {"esd": EsdConfig().settings, "fit": FitSettings(), "jacobian": JacobianSettings(), "threads": Threads()}
    expected = {f"{group}.{field.name}": getattr(value, field.name)
                for group, value in objects.items() for field in dataclasses.fields(value)}
    expected.update({f"esd.{field.name}": getattr(EsdConfig(), field.name)
                     for field in dataclasses.fields(EsdConfig) if field.name != "settings"})
    expected.update({f"select.{field.name}": list(value) if isinstance(value := getattr(Selection(), field.name), tuple)
                     else value for field in dataclasses.fields(Selection)})
    top = RunConfig(zoo=Path("z.tsv"))
    expected.update({"results": top.results, "on_layer_failure": top.on_layer_failure})
    assert schema_defaults == expected
    for name, sub in schema_keys(CONFIG_SCHEMA):  # and every key is documented
        assert len(sub.get("description", "")) > 20, name


def test_fit_settings_from_the_command_line_and_without_uncertainty():
    # --config 'fit={fingers: clip_xmax, bootstrap: 0, level: 0.9}' reaches Snakemake's config as text
    fit = run_config({"zoo": "z.tsv", "fit": {"fingers": "clip_xmax", "bootstrap": "0", "level": "0.9"}},
                     CONFIG_SCHEMA).fit
    assert (fit.fingers, fit.bootstrap, fit.level, fit.gof, fit.alternatives) == ("clip_xmax", 0, 0.9, 100, True)
    point = fit.without_uncertainty()
    assert (point.bootstrap, point.gof, point.alternatives) == (0, 0, False)
    assert (point.fingers, point.level, point.kind, point.min_evals) == ("clip_xmax", 0.9, "pl", 50)
    assert FitSettings(**fit.as_dict()) == fit  # the rules' plain form rebuilds it


def test_bad_config_names_the_source_and_each_field():
    with pytest.raises(ConfigError) as info:
        validate_config({"zoo": "z.tsv", "esd": {"conv2d": "blocks"}, "fit": {"min_evals": 0}, "typo": 1},
                        CONFIG_SCHEMA, source="config.yaml")
    message = str(info.value)
    assert message.startswith("config.yaml")
    assert "field 'esd.conv2d'" in message and "'blocks'" in message
    assert "field 'fit.min_evals'" in message
    assert "unknown key 'typo'; valid keys: " in message and "fit" in message
    with pytest.raises(ConfigError, match="'zoo' is a required property"):
        validate_config({}, CONFIG_SCHEMA)
    with pytest.raises(ConfigError, match="field 'fit.fingers'") as info:
        validate_config({"zoo": "z.tsv", "fit": {"fingers": "thumbs", "level": 1.5}}, CONFIG_SCHEMA)
    assert "field 'fit.level'" in str(info.value)


@pytest.mark.parametrize("key, group", [("min_evals", "fit"), ("device", "esd"), ("shard_mb", "esd"),
                                        ("randomize", "esd"), ("conv2d", "esd"), ("normalize", "esd"),
                                        ("conv2d_fft_size", "esd"), ("shared_cache", "esd"),
                                        ("delta_top_k", "esd")])
def test_an_old_flat_key_names_its_new_place(key, group):
    with pytest.raises(ConfigError) as info:
        validate_config({"zoo": "z.tsv", key: 1}, CONFIG_SCHEMA)
    assert f"key '{key}' has moved into the '{group}:' group" in str(info.value)
    assert f"--config '{group}={{{key}: VALUE}}'" in str(info.value)


def test_command_line_values_of_a_group_are_read_as_yaml():
    """Snakemake hands --config 'esd={shard_mb: 2, randomize: false}' over as strings."""
    config = run_config({"zoo": "z.tsv", "esd": {"shard_mb": "2", "randomize": "false", "normalize": "N"},
                         "fit": {"min_evals": "20"}}, CONFIG_SCHEMA)
    assert (config.esd.shard_mb, config.esd.settings.randomize, config.esd.settings.normalize) == (2, False, "N")
    assert config.fit.min_evals == 20
    with pytest.raises(ConfigError, match="field 'esd.shard_mb'"):
        validate_config({"zoo": "z.tsv", "esd": {"shard_mb": "big"}}, CONFIG_SCHEMA)


def test_readme_config_table_is_generated_from_the_schema():
    """README's table between the markers is `python -m zooscope.config --table`, byte for byte."""
    readme = (REPO / "README.md").read_text()
    start, end = "<!-- config-table -->\n", "<!-- /config-table -->"
    assert start in readme and end in readme
    table = readme.split(start, 1)[1].split(end, 1)[0]
    printed = subprocess.run([sys.executable, "-m", "zooscope.config", "--table"], capture_output=True,
                             text=True, check=True).stdout
    assert table == printed == config_table(CONFIG_SCHEMA)
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == len(list(schema_keys(CONFIG_SCHEMA))) == 35
    assert rows[0].startswith("| `zoo` | required |") and "| `esd.device` | `cpu` |" in table
def test_config_typos_get_the_closest_key():
    with pytest.raises(ConfigError) as info:
        validate_config({"zoo": "z.tsv", "fit": {"min_eval": 3, "flor": 1e-5}, "on_layer_fail": "warn"},
                        CONFIG_SCHEMA)
    message = str(info.value)
    assert "unknown key 'min_eval' in 'fit'; did you mean 'min_evals'?" in message
    assert "unknown key 'flor' in 'fit'; did you mean 'floor'?" in message
    assert "unknown key 'on_layer_fail'; did you mean 'on_layer_failure'?" in message


def test_zoo_sheet_rows_and_options(tmp_path):
    path = write_sheet(tmp_path, "# a comment\nmodel|series|source|accuracy|width\n"
                                 "a|s|train:mlp||64\nb|s|file:w.safetensors|71.5|\n")
    rows = read_zoo_sheet(path, ZOO_SCHEMA)
    assert rows == [
        ZooRow("a", "s", Source("train", "mlp", "train:mlp"), None, {"width": 64}),
        ZooRow("b", "s", Source("file", "w.safetensors", "file:w.safetensors", tmp_path / "w.safetensors"), 71.5),
    ]
    for row in rows:  # the plain form rules pass to scripts
        assert ZooRow.from_dict(row.as_dict()) == row


@pytest.mark.parametrize("row, fragments", [
    ("../evil|s|train:mlp|", ["row 2", "model '../evil'", "field 'model'"]),
    ("a/b|s|train:mlp|", ["row 2", "field 'model'"]),
    ("a|s|hub:x|", ["row 2", "unknown source 'hub:x'", "a source is one of: file:PATH (e.g. "]),
    ("a|s|tim:resnet50|", ["row 2", "did you mean timm:NAME"]),
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


def test_every_row_is_checked_when_the_sheet_is_read(tmp_path):
    """Options against the kind's declared ones, their values, and data only on rebuildable rows:
    all found when the sheet is read (before any job), each with its row and model."""
    path = write_sheet(tmp_path, "model|series|source|accuracy|width|dropout|label_noise|data\n"
                                 "a|s|train:mlp||64|0.1||\n"
                                 "b|s|torchvision:vgg11||64|||\n"
                                 "c|s|train:resnet|||||\n"
                                 "d|s|train:mlp||||1.5|\n"
                                 "e|s|file:weights.pt|||||digits\n"
                                 "f|s|random:mlp||32|||digits\n")
    with pytest.raises(ConfigError) as info:
        read_zoo_sheet(path, ZOO_SCHEMA)
    problems = str(info.value).splitlines()[1:]
    assert problems == [
        "  - row 2: model 'a': unknown option column 'dropout'; valid option columns: channels, depth, width, "
        "label_noise, epochs, lr, batch_size, seed, classes, stop_epoch, lora_rank, lora_alpha",
        "  - row 3: model 'b': option column 'width' does not apply to torchvision: sources; they take none",
        "  - row 4: model 'c': unknown architecture 'resnet'; valid architectures: cnn, lenet, mlp",
        "  - row 5: model 'd': column 'label_noise' must be in [0, 1], got 1.5",
        "  - row 6: model 'e': column 'data' (the Jacobian stage) needs a model that can be run again, from a "
        "file:, train:, random:, torchvision:, timm:, hf: source (file: only as a model folder whose config.json "
        "names a transformers image classifier, architectures ...ForImageClassification: token inputs are not "
        "supported), not file:weights.pt; leave the cell empty",
    ]


def test_paths_are_resolved_once_against_the_sheet(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write_sheet(tmp_path, "model|series|source|accuracy|data|data_samples|shards\n"
                                 "a|s|file:w/a.safetensors||||3\n"
                                 "b|s|file:~/b.pt||||\n"
                                 "c|s|file:/abs/c.pt||||\n"
                                 "d|s|random:mlp||sets/d.npz|7|\n")
    rows = {row.model: row for row in read_zoo_sheet(path, ZOO_SCHEMA)}
    assert rows["a"].source.path == tmp_path / "w" / "a.safetensors" and rows["a"].shards == 3
    assert rows["b"].source.path == tmp_path / "home" / "b.pt"
    assert rows["c"].source.path == Path("/abs/c.pt")
    assert rows["d"].source.path is None and rows["d"].data == DataSpec("sets/d.npz", tmp_path / "sets" / "d.npz", 7)
    assert rows["d"].fetch_form() == {**rows["d"].as_dict(), "data": None, "shards": None, "step": None}


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
    assert [row.base for row in read_zoo_sheet(path, ZOO_SCHEMA)] == [None, "a", "b"]


def test_a_file_folder_holding_an_adapter_is_a_peft_source_and_only_an_adapter_fetches_with_its_base(tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")
    path = write_sheet(tmp_path, "model|series|source|accuracy|base|data\n"
                                 "a|s|train:mlp|||\nb|s|file:lora||a|\nc|s|peft:lora||a|\nd|s|train:mlp||a|digits\n")
    a, b, c, d = read_zoo_sheet(path, ZOO_SCHEMA)
    assert (b.source.kind, b.source.text, b.adapter, c.adapter, d.adapter) == ("peft", "file:lora", True, True, False)
    assert b.source.local_inputs() == [tmp_path / "lora" / "adapter_config.json",
                                       tmp_path / "lora" / "adapter_model.safetensors"]
    assert b.fetch_form()["base"] == "a" and d.fetch_form()["base"] is None
    assert ZooRow.from_dict(d.as_dict()) == d


def test_a_base_that_is_no_model_id_is_an_error(tmp_path):
    path = write_sheet(tmp_path, "model|series|source|accuracy|base\na|s|train:mlp||\nb|s|train:mlp||a/b\n")
    with pytest.raises(ConfigError, match="row 3 .*base"):
        read_zoo_sheet(path, ZOO_SCHEMA)


def test_step_column_makes_a_series_a_trajectory_in_step_order(tmp_path):
    from zooscope.zoo import trajectory_series

    path = write_sheet(tmp_path, "model|series|source|accuracy|step\n"
                                 "c|run|train:mlp||20\na|run|train:mlp||5\nb|run|train:mlp||1e1\nx|other|train:mlp||\n")
    rows = read_zoo_sheet(path, ZOO_SCHEMA)
    assert [row.step for row in rows] == [20.0, 5.0, 10.0, None]
    assert trajectory_series(rows) == {"run": ["a", "b", "c"]}
    assert ZooRow.from_dict(rows[0].as_dict()) == rows[0]
    # a checkpoint's step is not what its weights depend on: giving one refetches nothing
    assert rows[0].fetch_form()["step"] is None


def test_step_column_errors_name_the_row(tmp_path):
    path = write_sheet(tmp_path, "model|series|source|accuracy|step\n"
                                 "a|run|train:mlp||1\n"
                                 "b|run|train:mlp||two\n"
                                 "c|run|train:mlp||1.0\n"
                                 "d|run|train:mlp||\n"
                                 "e|run2|train:mlp||1\n")
    with pytest.raises(ConfigError) as info:
        read_zoo_sheet(path, ZOO_SCHEMA)
    message = str(info.value)
    assert "model 'b': column 'step' must be a number, got 'two'" in message
    assert "row 4 (model 'c'): step 1 of series 'run' is already the step of row 2 (model 'a')" in message
    assert "row 5 (model 'd'): series 'run' is a training trajectory" in message
    assert "model 'e'" not in message and "model 'a'" not in message.replace("of row 2 (model 'a')", "")


def test_the_schemas_read_by_libyaml_are_what_pyyaml_s_own_parser_reads():
    import yaml

    for name in ("config", "zoo"):
        path = REPO / "schemas" / f"{name}.schema.yaml"
        assert load_schema(path) == yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
