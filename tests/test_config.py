from __future__ import annotations

import re
from pathlib import Path

import pytest

from fsl.config import load_config
from fsl.errors import FslError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_every_shipped_experiment_config_is_valid():
    configs = sorted(EXPERIMENTS.glob("*.yaml"))
    assert configs
    for path in configs:
        config = load_config(path)
        assert config.name == path.stem and config.episodes


BAD_CONFIGS = [
    ("method: protonet\nfusoin: image\n", r"bad.yaml: unknown key 'fusoin'"),
    ("method: protonet\nencoder: {name: clip, modle: ViT-B-32}\n", r"unknown key encoder\.'modle'"),
    ("method: maml\ntrain: {stpes: 20}\n", r"unknown key train\.'stpes'"),
    ("batch_size: -3\n", "batch_size must be a positive whole number"),
    ("method: maml\ntrain: {steps: 0}\n", "train.steps must be a positive whole number"),
    ("method: protonet\nmethod_options: [projection]\n", "method_options must be a mapping"),
    ("method: [unclosed\n", "not valid YAML"),
    ("!!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),  # safe_load refuses
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS)
def test_bad_configs_are_errors_naming_the_key_and_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(FslError, match=message):
        load_config(path)


def test_train_section_is_typed(tmp_path):
    path = tmp_path / "meta.yaml"
    path.write_text("method: maml\nfusion: gate\ntrain: {steps: 20, lr: 0.01}\n")
    config = load_config(path)
    assert config.train.steps == 20 and config.train.lr == 0.01 and config.train.val_episodes == "val-5w5s"


def test_set_overrides_a_dotted_key_with_its_type_and_renames_the_run(tmp_path):
    from fsl.config import override, parse_assignment

    config = load_config(EXPERIMENTS / "protonet-meta-fused-masked.yaml")
    changed = override(config, [parse_assignment("train.lr=3e-4"), parse_assignment("fusion_options.image_weight=0.6")])
    assert changed.train.lr == 3e-4 and changed.fusion_options == {"image_weight": 0.6}
    assert changed.name == "protonet-meta-fused-masked--train.lr-0.0003--fusion_options.image_weight-0.6"
    assert config.train.lr == 0.0001  # the original is untouched


@pytest.mark.parametrize(
    "assignment,message",
    [
        ("trian.lr=1", "unknown key 'trian'"),
        ("train.lrr=1", r"unknown key train\.'lrr'"),
        ("batch_size=big", "batch_size must be a positive whole number, got 'big'"),
        ("train.lr=-1", "train.lr must be a finite number > 0"),
        ("episodes", "expected KEY=VALUE"),
    ],
)
def test_bad_set_keys_and_types_are_errors_naming_them(assignment, message, capsys):
    from fsl.cli.main import main

    assert (
        main(["eval", str(EXPERIMENTS / "protonet-meta-fused-masked.yaml"), "--set", assignment, "--data", "/nowhere"])
        == 2
    )
    assert re.search(message, capsys.readouterr().err)


BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{x}: &{x} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, x in zip("abcdefgh", "bcdefghi")
)


def test_yaml_aliases_are_refused_before_they_expand_and_messages_stay_short(tmp_path):
    """A 512-byte config of nested aliases ("billion laughs") grew fsl eval past 2 GB: now refused at
    the first alias, in a message of a few lines, from a file and from --set alike."""
    from fsl.config import parse_assignment

    path = tmp_path / "bomb.yaml"
    path.write_text(f"method: protonet\nmethod_options:\n  x: &x {{}}\n{BILLION_LAUGHS}")
    with pytest.raises(FslError, match=r"bomb.yaml: not valid YAML for fsl \(a YAML alias \(\*a\) at line") as error:
        load_config(path)
    assert len(str(error.value)) < 400
    with pytest.raises(FslError, match="a YAML alias"):
        parse_assignment("method_options.C=[&v 1, *v]")
    huge = tmp_path / "huge.yaml"
    huge.write_text("batch_size: " + "x" * 1_000_000 + "\n")  # a 1 MB value in an error is cut
    with pytest.raises(FslError) as error:
        load_config(huge)
    assert len(str(error.value)) < 400


def test_an_episode_set_listed_twice_is_refused(tmp_path):
    """Listed twice, a set's episodes would count twice: a narrower interval from the same evidence."""
    path = tmp_path / "twice.yaml"
    path.write_text("method: protonet\nepisodes: [novel-5w1s, novel-5w5s, novel-5w1s]\n")
    with pytest.raises(FslError, match="twice.yaml: episodes lists 'novel-5w1s' more than once"):
        load_config(path)
