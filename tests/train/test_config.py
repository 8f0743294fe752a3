import pytest

from vlm_jax.config import Config, ConfigError, ModelConfig, dump_yaml, load, load_model_config


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_yaml_with_base_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", "model:\n  decoder: {num_layers: 4, hidden_size: 64}\n  vision: {kind: siglip}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nmodel:\n  decoder: {num_layers: 2}\n")
    cfg = load(Config, child, ["model.decoder.num_heads=8", "model.vision.select_layer=-1",
                               "train.optimizer.learning_rate=2e-5"])
    assert cfg.model.decoder.num_layers == 2 and cfg.model.decoder.hidden_size == 64
    assert cfg.model.decoder.num_heads == 8 and cfg.model.vision.kind == "siglip"
    assert cfg.model.vision.select_layer == -1 and cfg.train.optimizer.learning_rate == 2e-5


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path / "c.yaml", "model:\n  decoder: {num_layer: 2}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.decoder\.num_layer'"):
        load(Config, path)
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.visoin'"):
        load(Config, None, ["model.visoin.kind=clip"])


@pytest.mark.parametrize("override, key", [
    ("model.decoder.num_layers=two", "model.decoder.num_layers: expected an int"),
    ("model.scan_layers=3", "model.scan_layers: expected a bool"),
    ("model.vision.image_mean=0.5", "model.vision.image_mean: expected a list"),
    ("model.decoder.rms_norm_eps=tiny", "model.decoder.rms_norm_eps: expected a float"),
])
def test_wrong_type_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(Config, None, [override])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load(Config, None, ["model.dtype"])
    with pytest.raises(ConfigError, match="config file not found"):
        load(Config, str(tmp_path / "nope.yaml"))
    a = write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load(Config, a)


def test_model_config_round_trips_through_yaml(tmp_path):
    cfg = load(ModelConfig, None, ["decoder.rope_scaling={rope_type: llama3, factor: 8.0}", "projector.type=mlp3x_gelu"])
    dump_yaml(cfg, str(tmp_path / "m.yaml"))
    assert load_model_config(str(tmp_path / "m.yaml")) == cfg
