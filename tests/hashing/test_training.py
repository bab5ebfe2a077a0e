"""hashing.training.fit on a tiny model and synthetic digits-like tensors (no Ray)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from hashing import models, training
from hashing.recipe import Recipe
from hashing.rotations import fit_rotation

CLASSES, PER_CLASS, SIZE = 4, 12, 8
CPU = torch.device("cpu")


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n x 1 x 8 x 8): class c lights row block c, plus noise; labels class ids (n,)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    images = 0.3 * torch.randn(len(labels), 1, SIZE, SIZE, generator=generator)
    for row, label in enumerate(labels.tolist()):
        images[row, 0, 2 * label : 2 * label + 2] += 2.0
    return images, labels


def _setup(**recipe: object) -> training.TrainingSetup:
    torch.manual_seed(0)
    values = {"bits": 8, "batch_size": 16, "warmup_epochs": 0, **recipe}
    model = models.build("smallcnn", bits=8, in_channels=1)
    return training.build_training(Recipe(**values), model, num_classes=CLASSES)


def _batches(epoch: int):
    """The same batches each epoch; the global seed fixes dropout, so runs repeat exactly."""
    torch.manual_seed(100 + epoch)
    images, labels = _data()
    for start in range(0, len(images), 16):
        yield images[start : start + 16], labels[start : start + 16]


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage_plan_runs_pretraining_epochs_then_hashing_epochs() -> None:
    setup = _setup(method="exphash", epochs=2, pretrain_epochs=1)
    assert (setup.pretrain_epochs, setup.epochs, setup.rotation) == (1, 3, "none")
    assert setup.inner.classifier is not None
    phases = []
    state = training.fit(
        setup, _batches, CPU, callbacks=[lambda e, m, s: phases.append(setup.inner.pretraining)]
    )
    assert phases == [True, False, False]
    assert "train_classification" in state.history[0]
    assert all("train_classification" not in m for m in state.history[1:])
    assert setup.scheduler.last_epoch == 3  # stepped once per epoch, over both stages
    assert not setup.inner.pretraining


def test_methods_without_stages_build_no_classifier() -> None:
    setup = _setup(method="adsh", epochs=1)
    assert (setup.pretrain_epochs, setup.epochs, setup.inner.classifier) == (0, 1, None)
    assert _setup(method="sdsh", epochs=1).rotation == "search"


def test_best_epoch_is_the_highest_validation_map() -> None:
    setup = _setup(epochs=3)
    snapshots = {}
    state = training.fit(
        setup,
        _batches,
        CPU,
        validate=_scripted(0.2, 0.5, 0.3),
        callbacks=[lambda e, m, s: snapshots.update({e: _weights(setup.inner.model)})],
    )
    assert (state.epoch, state.best_epoch, state.best_val_map) == (2, 1, 0.5)
    assert [m["val_map"] for m in state.history] == [0.2, 0.5, 0.3]
    for name, value in state.best_model.items():
        assert torch.equal(value, snapshots[1][name])
    assert not torch.equal(state.best_model["hash_head.weight"], snapshots[2]["hash_head.weight"])


def test_without_validation_the_last_epoch_is_kept() -> None:
    setup = _setup(epochs=2, val_fraction=0)
    state = training.fit(setup, _batches, CPU)
    assert (state.best_epoch, state.best_val_map) == (1, None)
    assert all("val_map" not in m for m in state.history)
    final = _weights(setup.inner.model)
    assert all(torch.equal(state.best_model[k], final[k]) for k in final)


def test_callbacks_run_in_order_after_the_state_is_updated() -> None:
    setup = _setup(epochs=2)
    calls = []

    def callback(name: str):
        def record(epoch: int, metrics: dict[str, float], state: training.FitState) -> None:
            assert state.epoch == epoch and state.history[-1] is metrics
            calls.append((name, epoch, metrics["epoch"]))

        return record

    state = training.fit(setup, _batches, CPU, callbacks=[callback("a"), callback("b")])
    assert calls == [("a", 0, 1), ("b", 0, 1), ("a", 1, 2), ("b", 1, 2)]
    names = {"epoch", "train_loss", "train_images", "train_seconds", "train_images_per_s"}
    assert names | {"epoch_seconds"} <= set(state.history[0])  # plus train_<loss term> means
    assert "val_map" not in state.history[0]
    assert state.history[0]["train_images"] == CLASSES * PER_CLASS


def test_resume_from_a_checkpoint_continues_at_the_next_epoch_as_if_uninterrupted() -> None:
    straight = _setup(epochs=3)
    expected = training.fit(straight, _batches, CPU, validate=_scripted(0.4, 0.6, 0.5))

    seen: list[int] = []
    record = [lambda epoch, metrics, state: seen.append(epoch)]
    first = _setup(epochs=3)
    stopped = training.fit(
        first, _batches, CPU, validate=_scripted(0.4), callbacks=record, stop_after_epochs=1
    )
    assert (stopped.epoch, seen) == (0, [0])
    buffer = io.BytesIO()
    torch.save(first.checkpoint(stopped), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, map_location="cpu", weights_only=True)  # as the Ray worker loads it

    resumed = _setup(epochs=3)  # as in a fresh process: new weights, optimizer and schedule
    state = resumed.restore(saved)
    state = training.fit(
        resumed, _batches, CPU, validate=_scripted(0.6, 0.5), state=state, callbacks=record
    )
    assert seen == [0, 1, 2]
    assert [m["epoch"] for m in state.history] == [1, 2, 3]
    assert (state.best_epoch, state.best_val_map) == (expected.best_epoch, expected.best_val_map)
    assert resumed.scheduler.last_epoch == straight.scheduler.last_epoch == 3
    final = resumed.inner.state_dict()
    for name, value in straight.inner.state_dict().items():
        assert torch.equal(value, final[name]), name


def _scripted(*scores: float):
    """A validate function returning ``scores`` in turn."""
    values = iter(scores)
    return lambda model: next(values)


def test_stop_after_epochs_ends_the_call_early() -> None:
    setup = _setup(epochs=3)
    state = training.fit(setup, _batches, CPU, stop_after_epochs=2)
    assert state.epoch == 1 and len(state.history) == 2


def test_epoch_line_names_loss_validation_and_speed() -> None:
    metrics = {"epoch": 2, "train_loss": 0.51234, "train_images_per_s": 812.4}
    assert training.epoch_line(metrics, 5) == "epoch 2/5  loss 0.5123  812 img/s"
    line = training.epoch_line({**metrics, "val_map": 0.9}, 5)
    assert line == "epoch 2/5  loss 0.5123  val mAP 0.9000  812 img/s"


def test_post_hoc_rotation_after_fit_is_orthogonal_and_applied_by_embed() -> None:
    setup = _setup(method="sdsh", epochs=1, rotation="itq")
    state = training.fit(setup, _batches, CPU)
    model = setup.inner.model
    model.load_state_dict(state.best_model)
    outputs, labels = training.compute_outputs(model, _batches(0), CPU)
    rotation = fit_rotation(setup.rotation, outputs, labels, seed=0)
    assert rotation.dtype == torch.float32 and rotation.shape == (8, 8)
    assert torch.allclose(rotation @ rotation.T, torch.eye(8), atol=1e-5)
    model.set_rotation(rotation)
    rotated, _ = training.compute_outputs(model, _batches(0), CPU)
    np.testing.assert_allclose(rotated, outputs @ rotation.numpy(), rtol=1e-4, atol=1e-5)
    search = fit_rotation("search", outputs, labels, seed=0)  # SDSH's mAP search, the default
    assert torch.allclose(search @ search.T, torch.eye(8), atol=1e-5)
    with pytest.raises(ValueError, match="itq or search"):
        fit_rotation("none", outputs, labels, seed=0)
