"""Model registry, save/load without pickle, protocols and augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hashing import models, splits
from hashing.augment import RandomAffine

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", models.list_models())
def test_every_backbone_builds_offline_and_outputs_bits(name: str) -> None:
    size = 28 if name.startswith("smallcnn") else 64
    for channels in (1, 3):
        model = models.build(name, bits=24, in_channels=channels).eval()
        with torch.no_grad():
            assert model(torch.randn(2, channels, size, size)).shape == (2, 24)


def test_unknown_backbone_and_bad_bits() -> None:
    with pytest.raises(ValueError, match="smallcnn"):
        models.build("vit_huge", bits=32)
    with pytest.raises(ValueError, match="positive"):
        models.build("smallcnn", bits=0)


def test_save_load_round_trip_with_rotation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.build("smallcnn", bits=16, in_channels=1).eval()
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    model.set_rotation(rotation)
    models.save_model(model, tmp_path, extra={"method": "adsh", "mean": 0.5})
    loaded = models.load_model(tmp_path)
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(loaded.embed(x), model.embed(x), atol=1e-5)
    assert torch.allclose(model.embed(x), model(x) @ rotation, atol=1e-5)
    config = json.loads((tmp_path / "model.json").read_text())
    assert config["has_rotation"] and config["method"] == "adsh"
    # the weights file holds only tensors: it loads with weights_only=True
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_shift_average_embeds_the_mean_over_one_pixel_shifts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.build("smallcnn", bits=16, in_channels=1, shift_average=True).eval()
    x = torch.randn(2, 1, 28, 28)
    # Reference: the image and its four one-pixel moves, edge pixels repeated into the gap.
    down = torch.cat([x[..., :1, :], x[..., :-1, :]], dim=-2)
    up = torch.cat([x[..., 1:, :], x[..., -1:, :]], dim=-2)
    right = torch.cat([x[..., :, :1], x[..., :, :-1]], dim=-1)
    left = torch.cat([x[..., :, 1:], x[..., :, -1:]], dim=-1)
    with torch.no_grad():
        expected = torch.stack([model(v) for v in (x, down, up, right, left)]).mean(0)
    assert torch.allclose(model.embed(x), expected, atol=1e-5)
    assert not torch.allclose(model.embed(x), model(x), atol=1e-3)
    # Saved with the model: encode and serve get the same codes.
    models.save_model(model, tmp_path)
    loaded = models.load_model(tmp_path)
    assert loaded.config["shift_average"]
    assert torch.allclose(loaded.embed(x), expected, atol=1e-5)


def test_smallcnn_deep_is_smallcnn_with_one_more_conv() -> None:
    small, deep = (models.build(n, bits=8, in_channels=1) for n in ("smallcnn", "smallcnn-deep"))
    convs = [[m for m in net.backbone if isinstance(m, torch.nn.Conv2d)] for net in (small, deep)]
    assert len(convs[1]) == len(convs[0]) + 1 == 4
    assert convs[1][-1].in_channels == convs[1][-1].out_channels == 128


@pytest.mark.parametrize("name", ["smallcnn", "smallcnn-deep"])
def test_seeded_initial_weights_follow_the_layer_order(name: str) -> None:
    # A seed must keep giving the weights it gave when the grid was trained: layers are made in
    # the order they run, so a reference built in that order draws the same numbers.
    torch.manual_seed(0)
    model = models.build(name, bits=8, in_channels=1)
    torch.manual_seed(0)
    shapes = [(1, 32), (32, 64), (64, 128)] + [(128, 128)] * (name == "smallcnn-deep")
    reference = [torch.nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in shapes]
    reference.append(torch.nn.Linear(128 * 9, 256))
    layers = [m for m in model.backbone if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == len(reference)
    for got, expected in zip(layers, reference):
        assert torch.equal(got.weight, expected.weight)


def test_pretrained_weights_come_from_a_local_file(tmp_path: Path) -> None:
    source = models.build("resnet18", bits=32)
    torch.save(source.backbone.state_dict(), tmp_path / "backbone.pt")
    model = models.build("resnet18", bits=32, pretrained_path=tmp_path / "backbone.pt")
    assert torch.equal(model.backbone.conv1.weight, source.backbone.conv1.weight)
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no weights matching"):
        models.build("resnet18", bits=32, pretrained_path=tmp_path / "bad.pt")


def test_mnist5k_protocol_counts_and_determinism() -> None:
    labels = np.repeat(np.arange(10), 500)
    first = splits.split_indices(labels, "mnist5k", seed=0)
    assert len(first["query"]) == 1000 and len(first["train"]) == 4000 and first["database"] is None
    assert np.all(np.bincount(labels[first["query"]]) == 100)
    assert not set(first["query"]) & set(first["train"])
    again = splits.split_indices(labels, "mnist5k", seed=0)
    assert all(np.array_equal(first[k], again[k]) for k in ("query", "train"))
    other = splits.split_indices(labels, "mnist5k", seed=1)
    assert not np.array_equal(first["query"], other["query"])


def test_cifar_protocols_database_rules() -> None:
    labels = np.repeat(np.arange(10), 700)
    one_k = splits.split_indices(labels, "cifar10-1k")
    assert len(one_k["query"]) == 1000 and len(one_k["train"]) == 5000
    assert len(one_k["database"]) == 6000 and set(one_k["train"]) <= set(one_k["database"])
    excl = splits.split_indices(labels, "cifar10-54k")
    assert len(excl["database"]) == 1000 and not set(excl["train"]) & set(excl["database"])
    with pytest.raises(ValueError, match="needs"):
        splits.split_indices(np.repeat(np.arange(10), 50), "cifar10-1k")
    with pytest.raises(ValueError, match="unknown protocol"):
        splits.split_indices(labels, "imagenet")


def test_random_protocol_multilabel_and_holdout() -> None:
    multi = np.zeros((50, 3), dtype=int)
    multi[np.arange(50), np.arange(50) % 3] = 1
    multi[::7, 0] = 1
    split = splits.split_indices(multi, "random", seed=3)
    assert len(split["query"]) + len(split["train"]) == 50 and len(split["query"]) >= 3
    kept, held = splits.holdout(100, 0.1, seed=0)
    assert len(held) == 10 and len(kept) == 90 and not set(kept) & set(held)


def test_fashion_mnist_protocols_draw_from_the_official_split() -> None:
    rng = np.random.default_rng(0)
    official = np.array(["train"] * 600 + ["test"] * 1300)
    labels = np.concatenate([np.arange(600) % 10, rng.permutation(np.arange(1300) % 10)])
    test_rows, train_rows = np.flatnonzero(official == "test"), np.flatnonzero(official == "train")

    full = splits.split_indices(labels, "fashion-mnist", official_split=official)
    assert np.array_equal(full["query"], test_rows) and np.array_equal(full["train"], train_rows)
    assert full["database"] is None  # the database is the train split

    one_k = splits.split_indices(labels, "fashion-mnist-1k", seed=0, official_split=official)
    assert len(one_k["query"]) == 1000 and set(one_k["query"]) <= set(test_rows)
    assert np.all(np.bincount(labels[one_k["query"]]) == 100)
    assert np.array_equal(one_k["train"], train_rows) and one_k["database"] is None
    again = splits.split_indices(labels, "fashion-mnist-1k", seed=0, official_split=official)
    assert np.array_equal(one_k["query"], again["query"])
    other = splits.split_indices(labels, "fashion-mnist-1k", seed=1, official_split=official)
    assert not np.array_equal(one_k["query"], other["query"])

    with pytest.raises(ValueError, match="official train/test split"):
        splits.split_indices(labels, "fashion-mnist")
    with pytest.raises(ValueError, match="needs 100 test rows of class"):
        few = official.copy()
        few[600:1000] = "train"  # 90 test rows per class are left
        splits.split_indices(labels, "fashion-mnist-1k", official_split=few)


def test_random_affine_keeps_shape_and_is_identity_in_eval() -> None:
    augment = RandomAffine(generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 1, 28, 28)
    out = augment(x)
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert torch.equal(augment.eval()(x), x)


def test_random_affine_hflip_mirrors_about_half_the_images() -> None:
    # No jitter, so the only change an image can see is the mirror.
    still = {"degrees": 0.0, "translate": 0.0, "scale": (1.0, 1.0)}
    x = torch.rand(64, 1, 8, 8)
    assert torch.allclose(RandomAffine(**still)(x), x, atol=1e-5)
    out = RandomAffine(**still, hflip=True, generator=torch.Generator().manual_seed(0))(x)
    mirrored = [bool(torch.allclose(o, i.flip(-1), atol=1e-5)) for o, i in zip(out, x)]
    kept = [bool(torch.allclose(o, i, atol=1e-5)) for o, i in zip(out, x)]
    assert all(m != k for m, k in zip(mirrored, kept))  # each image is one or the other
    assert 16 < sum(mirrored) < 48
