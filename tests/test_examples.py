"""examples/train_mnist5k.py, the plain-PyTorch reference, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_mnist5k.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(EXAMPLE), *args]
    return subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_config_recipe_with_overrides_trains_and_reports_it():
    done = _run(
        "--config",
        "configs/mnist5k-adsh-48-tuned.yaml",
        "--epochs",
        "1",
        "--seed",
        "3",
        "--set",
        "batch_size=256",
        "--set",
        "loss_params={m: 0.3}",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    recipe = result["recipe"]
    # the config's keys, then --set, then the named flags
    assert recipe["backbone"] == "smallcnn-deep" and recipe["shift_average"] is True
    assert recipe["bits"] == 48
    assert (recipe["batch_size"], recipe["loss_params"], recipe["epochs"], recipe["seed"]) == (
        256,
        {"m": 0.3},
        1,
        3,
    )
    # one warm-up epoch of 14 steps already ranks far above chance (about 0.1; 0.45 here)
    assert 0.3 < result["map_tie_aware"] <= 1.0


def test_unknown_recipe_key_is_a_clear_error():
    done = _run("--set", "batch_sise=32", "--epochs", "1")
    assert done.returncode != 0
    assert "batch_sise" in done.stderr and "batch_size" in done.stderr  # names the valid keys


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_val_fraction_zero_trains_on_every_row_and_keeps_the_last_epoch():
    done = _run("--epochs", "1", "--set", "val_fraction=0", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["recipe"]["val_fraction"] == 0 and result["best_val_map"] is None
    assert 0.3 < result["map_tie_aware"] <= 1.0
