"""The `hashray` command line: help that teaches, errors that say what to do, config precedence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hashing import losses, models
from pipelines.cli import SOURCE_NAMES, main
from pipelines.config import load_train_config

COMMANDS = ["prepare", "train", "encode", "evaluate", "demo", "serve", "search"]
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_examples(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"hashray {command}" in out and "--json" in out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "hashray"
    result = subprocess.run([script, "--help"], check=False, capture_output=True, text=True)
    assert result.returncode == 0 and "demo" in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train"], "pass --data DIR"),
        (["train", "--data", "no/such/dir"], "does not exist"),
        (["evaluate"], "give --codes DIR"),
        (["evaluate", "--codes", "no/such/codes"], "does not exist"),
        (
            ["prepare", "--source", "parquet", "--path", "t", "--out", "o", "--option", "image"],
            "KEY=VALUE",
        ),
    ],
)
def test_errors_exit_2_with_advice(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_prepare_help_names_every_source(capsys: pytest.CaptureFixture) -> None:
    from pipelines.sources import list_sources

    assert sorted(SOURCE_NAMES) == list_sources()
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in list_sources())


def test_s3_endpoint_flag_reaches_boto3_and_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://before:1")  # restored afterwards
    assert (
        main(["--s3-endpoint", "http://127.0.0.1:9", "evaluate"]) == 2
    )  # fails after the flag applies
    assert storage.s3_endpoint() == "http://127.0.0.1:9"


def test_config_precedence_defaults_yaml_flags(tmp_path: Path) -> None:
    config = load_train_config(
        REPO / "configs" / "mnist5k-adsh-32.yaml", "data/x", {"bits": 48, "workers": None}
    )
    assert config.recipe.bits == 48  # flag beats YAML
    assert config.recipe.method == "adsh" and config.workers == 1  # YAML, and None falls through
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe:\n  epochz: 3\n")
    with pytest.raises(ValueError, match="unknown recipe keys"):
        load_train_config(bad, "data/x")
    bad.write_text("workerz: 3\n")
    with pytest.raises(ValueError, match="unknown config keys"):
        load_train_config(bad, "data/x")
    with pytest.raises(ValueError, match="between 1 and 1024"):
        load_train_config(None, "data/x", {"bits": 0})


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_model(path: Path) -> None:
    recipe = load_train_config(path, "data/x").recipe
    model = models.build(
        recipe.backbone, bits=recipe.bits, in_channels=1, shift_average=recipe.shift_average
    )
    losses.build(recipe.method, bits=recipe.bits, num_classes=10, **recipe.loss_params)
    assert model.embed(torch.zeros(2, 1, 28, 28)).shape == (2, recipe.bits)


def test_run_name_is_deterministic_and_tracks_the_recipe() -> None:
    a = load_train_config(None, "d", {"bits": 32})
    b = load_train_config(None, "d", {"bits": 32})
    c = load_train_config(None, "d", {"bits": 32, "epochs": 3})
    assert a.run_name("mnist5k") == b.run_name("mnist5k") != c.run_name("mnist5k")
    assert a.run_name("mnist5k").startswith("mnist5k-adsh-32-")


def test_a_method_flag_over_a_tuned_config_drops_the_configs_loss_params() -> None:
    tuned = REPO / "configs" / "mnist5k-adsh-48-tuned.yaml"
    assert load_train_config(tuned, "d").recipe.loss_params == {"m": 0.4}
    other = load_train_config(tuned, "d", {"method": "sdsh"}).recipe
    assert other.method == "sdsh" and other.loss_params == {}
    assert other.backbone == "smallcnn-deep"  # every other setting of the config stays
    given = load_train_config(tuned, "d", {"method": "sdsh", "loss_params": {"alpha": 0.5}})
    assert given.recipe.loss_params == {"alpha": 0.5}
