"""hashing.recipe: the stage plan of each method and reading a config's ``recipe:`` section."""

from __future__ import annotations

from pathlib import Path

import pytest

from hashing.recipe import Recipe


def test_stage_plan_defaults_follow_the_method_stages() -> None:
    assert Recipe().stage_plan(()) == (0, "none")
    assert Recipe().stage_plan(("classification_pretrain",)) == (3, "none")
    assert Recipe().stage_plan(("rotation",)) == (0, "search")
    assert Recipe(pretrain_epochs=1, rotation="itq").stage_plan(("rotation",)) == (1, "itq")


def test_a_rotation_needs_a_validation_split() -> None:
    with pytest.raises(ValueError, match="rotation is fitted on the validation split"):
        Recipe(val_fraction=0).stage_plan(("rotation",))
    assert Recipe(val_fraction=0, rotation="none").stage_plan(("rotation",)) == (0, "none")
    with pytest.raises(ValueError, match="none, itq or search"):
        Recipe(rotation="pca").stage_plan(())


def test_from_yaml_reads_the_recipe_section_and_refuses_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("recipe:\n  method: sdsh\n  bits: 48\n  loss_params: {m: 0.4}\nworkers: 2\n")
    assert Recipe.from_yaml(config) == Recipe(method="sdsh", bits=48, loss_params={"m": 0.4})
    (tmp_path / "empty.yaml").write_text("workers: 1\n")
    assert Recipe.from_yaml(tmp_path / "empty.yaml") == Recipe()
    (tmp_path / "typo.yaml").write_text("recipe: {bitz: 12}\n")
    with pytest.raises(ValueError, match="bitz"):
        Recipe.from_yaml(tmp_path / "typo.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(TypeError, match="mapping"):
        Recipe.from_yaml(tmp_path / "list.yaml")


def test_for_method_keeps_loss_params_only_for_their_own_method() -> None:
    tuned = Recipe(method="adsh", bits=48, epochs=14, hflip=True, loss_params={"m": 0.4})
    assert tuned.for_method("adsh") == tuned
    other = tuned.for_method("sdsh")
    assert other.method == "sdsh" and other.loss_params == {}
    assert (other.bits, other.epochs, other.hflip) == (48, 14, True)
