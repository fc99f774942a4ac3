from __future__ import annotations

from pathlib import Path

import pytest

from fsl import FslError
from fsl.config import load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_every_shipped_experiment_config_is_valid():
    configs = sorted(EXPERIMENTS.glob("*.yaml"))
    assert configs
    for path in configs:
        config = load_config(path)
        assert config.name == path.stem and config.episodes


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: protonet\nfusoin: image\n")
    with pytest.raises(FslError, match=rf"{path}: unknown key 'fusoin'"):
        load_config(path)
    path.write_text("method: protonet\nencoder: {name: clip, modle: ViT-B-32}\n")
    with pytest.raises(FslError, match=r"unknown key encoder\.'modle'"):
        load_config(path)


def test_bad_values_and_bad_yaml_are_clear_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("batch_size: -3\n")
    with pytest.raises(FslError, match="batch_size must be a positive whole number"):
        load_config(path)
    path.write_text("method: [unclosed\n")
    with pytest.raises(FslError, match="not valid YAML"):
        load_config(path)
    path.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(FslError, match="not valid YAML"):
        load_config(path)


def test_train_section_is_typed_and_validated(tmp_path):
    path = tmp_path / "meta.yaml"
    path.write_text("method: maml\nfusion: gate\ntrain: {steps: 20, lr: 0.01}\n")
    config = load_config(path)
    assert config.train.steps == 20 and config.train.lr == 0.01 and config.train.val_episodes == "val-5w5s"
    path.write_text("method: maml\ntrain: {stpes: 20}\n")
    with pytest.raises(FslError, match=r"unknown key train\.'stpes'"):
        load_config(path)
    path.write_text("method: maml\ntrain: {steps: 0}\n")
    with pytest.raises(FslError, match="train.steps must be a positive whole number"):
        load_config(path)
    path.write_text("method: protonet\nmethod_options: [projection]\n")
    with pytest.raises(FslError, match="method_options must be a mapping"):
        load_config(path)
