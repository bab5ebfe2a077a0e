"""Tests for hashing.losses: the registry, the base-class contract, and ADSH against plain loops."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from hashing import losses
from hashing.losses import as_multihot, similarity_matrix

BITS, CLASSES = 12, 5
MARGINS = ["cosface", "arcface", "sphereface"]
DEFAULT_M = {"cosface": 0.2, "arcface": 0.2, "sphereface": 4}  # docs/methods.md
# sphereface with a fixed small lambda, so psi (not the near-plain cos blend) is what gets tested
SPHERE_FIXED = {"lambda_base": 0.0, "lambda_min": 0.5}


pytestmark = pytest.mark.usefixtures("one_thread")


def margin_params(margin: str) -> dict:
    return {"margin": margin, **(SPHERE_FIXED if margin == "sphereface" else {})}


def random_label_sets(n: int, num_classes: int, multi: bool, gen: torch.Generator) -> list[list]:
    """n label sets; with multi, every other sample gets 2-3 labels."""
    sets = []
    for i in range(n):
        size = 1 + (i % 2) * int(torch.randint(1, 3, (1,), generator=gen)) if multi else 1
        sets.append(sorted(torch.randperm(num_classes, generator=gen)[:size].tolist()))
    return sets


def to_multihot(label_sets: list[list], num_classes: int) -> torch.Tensor:
    out = torch.zeros(len(label_sets), num_classes)
    for i, labels in enumerate(label_sets):
        out[i, labels] = 1
    return out


def reference_adsh(
    outputs,
    label_sets,
    weight,
    *,
    margin,
    s=10.0,
    m,
    t,
    lam=None,
    alpha=1.0,
    beta=1.0,
    normalize=True,
) -> float:
    """ADSH written as plain per-sample / per-pair loops over Python floats."""
    n, bits = outputs.shape
    num_classes = weight.shape[0]

    def cosine(a, b):
        return float(a @ b) / (float(a.norm()) * float(b.norm()))

    def other_logit(c, norm):
        return norm * c if margin == "sphereface" else s * c

    def target_logit(c, norm):
        if margin == "cosface":
            return s * (c - m)
        if margin == "arcface":
            return s * math.cos(math.acos(c) + m)
        theta = math.acos(c)
        k = math.floor(m * theta / math.pi)
        psi = (-1) ** k * math.cos(m * theta) - 2 * k
        return norm * (lam * c + psi) / (1 + lam)

    total_ce = 0.0
    for i in range(n):
        h, norm, labels = outputs[i], float(outputs[i].norm()), label_sets[i]
        cosines = [cosine(h, weight[c]) for c in range(num_classes)]
        if len(labels) > 1:
            logits = [other_logit(c, norm) for c in cosines]
            logits.append(target_logit(cosine(h, weight[labels].mean(dim=0)), norm))
            target = num_classes
        else:
            target = labels[0]
            logits = [
                target_logit(c, norm) if j == target else other_logit(c, norm)
                for j, c in enumerate(cosines)
            ]
        total_ce += math.log(sum(math.exp(z) for z in logits)) - logits[target]
    angular = total_ce / n

    codes = [torch.tanh(t * w / w.norm()) for w in weight]
    dists = []
    for a in range(num_classes):
        for b in range(a + 1, num_classes):
            d = (bits - float(codes[a] @ codes[b])) / 2
            dists.append(d / bits if normalize else d)
    mean = sum(dists) / len(dists)
    var = sum((d - mean) ** 2 for d in dists) / len(dists)
    return angular - alpha * mean + beta * var


def make_batch(n=9, multi=True, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    label_sets = random_label_sets(n, CLASSES, multi, gen)
    outputs = torch.randn(n, BITS, generator=gen, dtype=dtype)
    return outputs, label_sets, to_multihot(label_sets, CLASSES).to(dtype)


# ---------------------------------------------------------------- ADSH against the reference


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("multi", [False, True])
def test_adsh_matches_plain_loop(margin, multi):
    torch.manual_seed(1)
    loss = losses.build("adsh", bits=BITS, num_classes=CLASSES, **margin_params(margin)).double()
    loss.eval()
    outputs, label_sets, multihot = make_batch(multi=multi, dtype=torch.float64)
    value = loss(outputs, multihot).detach()
    expected = reference_adsh(
        outputs,
        label_sets,
        loss.weight.detach(),
        margin=margin,
        m=DEFAULT_M[margin],
        t=math.sqrt(BITS),
        lam=0.5,
    )
    assert value.ndim == 0
    assert float(value) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    terms = loss.last_terms
    assert set(terms) == {"angular", "separation_mean", "separation_var"}
    recombined = terms["angular"] - terms["separation_mean"] + terms["separation_var"]
    assert recombined == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_adsh_raw_separation_and_weights_match_loop():
    torch.manual_seed(2)
    loss = losses.build(
        "adsh",
        bits=BITS,
        num_classes=CLASSES,
        alpha=0.3,
        beta=2.0,
        t=1.0,
        normalize_separation=False,
        s=7.0,
        m=0.35,
    ).double()
    outputs, label_sets, multihot = make_batch(dtype=torch.float64)
    expected = reference_adsh(
        outputs,
        label_sets,
        loss.weight.detach(),
        margin="cosface",
        s=7.0,
        m=0.35,
        t=1.0,
        alpha=0.3,
        beta=2.0,
        normalize=False,
    )
    assert loss(outputs, multihot).item() == pytest.approx(expected, rel=1e-9)
    # raw D lies in [0, K], normalised D in [0, 1]
    assert 0 <= loss.class_code_distances().min() <= loss.class_code_distances().max() <= BITS


def test_adsh_single_label_is_plain_cosface_softmax():
    """Dynamic softmax must vanish when every sample has one label: plain F.cross_entropy."""
    torch.manual_seed(3)
    loss = losses.build("adsh", bits=BITS, num_classes=CLASSES, alpha=0.0, beta=0.0)
    outputs, label_sets, multihot = make_batch(multi=False)
    ids = torch.tensor([labels[0] for labels in label_sets])
    cos = (
        torch.nn.functional.normalize(outputs, dim=1)
        @ torch.nn.functional.normalize(loss.weight.detach(), dim=1).T
    )
    plain = torch.nn.functional.cross_entropy(
        10.0 * (cos - 0.2 * torch.nn.functional.one_hot(ids, CLASSES)), ids
    )
    torch.testing.assert_close(loss(outputs, multihot), plain)
    torch.testing.assert_close(loss(outputs, ids), plain)
    torch.testing.assert_close(loss(outputs, multihot.bool()), plain)


def test_adsh_multilabel_rows_use_the_dynamic_logit():
    """A two-label sample is best placed at the mean of its classes' weights, not at either one."""
    torch.manual_seed(4)
    loss = losses.build("adsh", bits=BITS, num_classes=CLASSES, alpha=0.0, beta=0.0)
    w = torch.nn.functional.normalize(loss.weight.detach(), dim=1)
    at_mean, at_first = (w[0] + w[1])[None], w[0][None]
    both, first = torch.tensor([[1, 1, 0, 0, 0]]), torch.tensor([0])
    assert loss(at_mean, both).item() < loss(at_first, both).item()
    # the single-label sample prefers its own class weight: the dynamic logit is off for it
    assert loss(at_first, first).item() < loss(at_mean, first).item()


@pytest.mark.parametrize("margin", MARGINS)
def test_adsh_gradcheck(margin):
    torch.manual_seed(5)
    loss = losses.build("adsh", bits=6, num_classes=3, **margin_params(margin)).double().eval()
    outputs = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.float64)
    weight = loss.weight.detach().clone().requires_grad_(True)

    def call(h, w):
        return functional_call(loss, {"weight": w}, (h, labels))

    assert torch.autograd.gradcheck(call, (outputs, weight))


def test_sphereface_lambda_anneals_in_training_mode_only():
    loss = losses.build("adsh", bits=8, num_classes=3, margin="sphereface")
    outputs, labels = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    loss.eval()
    loss(outputs, labels)
    assert int(loss.step) == 0
    loss.train()
    for _ in range(3):
        loss(outputs, labels)
    assert int(loss.step) == 3
    assert "step" in loss.state_dict()
    # after many steps lambda reaches its floor of 5: compare with the reference at lam = 5
    loss.step.fill_(10**6)
    loss.eval()
    expected = reference_adsh(
        outputs.double(),
        [[0], [1], [2], [0]],
        loss.weight.detach().double(),
        margin="sphereface",
        m=4,
        t=math.sqrt(8),
        lam=5.0,
    )
    assert loss(outputs, labels).item() == pytest.approx(expected, rel=1e-5)


def test_adsh_learns_separable_blobs():
    """Linear layer on Gaussian blobs: loss falls and each class gets its own sign code."""
    torch.manual_seed(6)
    classes, per_class, dim, bits = 4, 50, 8, 16
    centres = torch.randn(classes, dim) * 3
    labels = torch.arange(classes).repeat_interleave(per_class)
    inputs = centres[labels] + torch.randn(len(labels), dim)
    model = torch.nn.Linear(dim, bits)
    loss = losses.build("adsh", bits=bits, num_classes=classes)
    optimizer = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=0.05)
    history = []
    for _ in range(100):
        optimizer.zero_grad()
        value = loss(model(inputs), labels)
        value.backward()
        optimizer.step()
        history.append(loss.last_terms["angular"])
    assert history[-1] < 0.05 * history[0]

    codes = model(inputs).detach() >= 0
    class_codes = torch.stack([codes[labels == c].float().mean(0) >= 0.5 for c in range(classes)])
    hamming = (codes[:, None, :] != class_codes[None]).sum(-1)  # (n x classes)
    assert (hamming.argmin(1) == labels).float().mean() > 0.95
    between = (class_codes[:, None] != class_codes[None]).sum(-1)
    assert between[~torch.eye(classes, dtype=torch.bool)].min() >= 4


# ---------------------------------------------------------------- every registered loss


@pytest.mark.parametrize("name", losses.list_losses())
def test_registered_loss_contract(name):
    torch.manual_seed(7)
    loss = losses.build(name, bits=16, num_classes=CLASSES)
    assert isinstance(loss, losses.HashLoss)
    assert isinstance(loss.stages, tuple)
    gen = torch.Generator().manual_seed(0)
    multi_labels = to_multihot(random_label_sets(8, CLASSES, True, gen), CLASSES)
    distinct = torch.arange(CLASSES)  # no pair of samples shares a label
    distinct_multihot = as_multihot(distinct, CLASSES)
    assert similarity_matrix(distinct_multihot, distinct_multihot).sum() == CLASSES  # diagonal
    for labels in (multi_labels, distinct):
        outputs = torch.randn(len(labels), 16, requires_grad=True)
        loss.zero_grad()
        value = loss(outputs, labels)
        assert value.ndim == 0 and torch.isfinite(value)
        value.backward()
        assert torch.isfinite(outputs.grad).all() and outputs.grad.abs().sum() > 0
        for param in loss.parameters():
            assert param.grad is None or torch.isfinite(param.grad).all()
        assert loss.last_terms and all(
            type(v) is float and math.isfinite(v) for v in loss.last_terms.values()
        )


@pytest.mark.parametrize("name", losses.list_losses())
def test_registered_loss_label_forms_and_state_dict(name):
    torch.manual_seed(8)
    loss = losses.build(name, bits=16, num_classes=CLASSES).eval()
    outputs, ids = torch.randn(6, 16), torch.tensor([0, 1, 1, 2, 4, 4])
    one_hot = torch.nn.functional.one_hot(ids, CLASSES)
    torch.testing.assert_close(loss(outputs, ids), loss(outputs, one_hot))
    torch.testing.assert_close(loss(outputs, ids), loss(outputs, one_hot.bool()))
    restored = losses.build(name, bits=16, num_classes=CLASSES).eval()
    restored.load_state_dict(loss.state_dict())
    torch.testing.assert_close(restored(outputs, ids), loss(outputs, ids))


# ---------------------------------------------------------------- registry, helpers, errors


def test_build_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid losses: .*adsh"):
        losses.build("nope", bits=16, num_classes=3)


def test_build_none_params_fall_through_and_unknown_params_fail():
    loss = losses.build("adsh", bits=16, num_classes=3, s=None, m=None, t=None)
    assert (loss.s, loss.m, loss.t) == (10.0, 0.2, 4.0)
    assert losses.build("adsh", bits=16, num_classes=3, margin="sphereface").m == 4
    with pytest.raises(ValueError, match="no parameter.*scale"):
        losses.build("adsh", bits=16, num_classes=3, scale=3)
    with pytest.raises(ValueError, match="margin must be one of"):
        losses.build("adsh", bits=16, num_classes=3, margin="cos")
    with pytest.raises(ValueError, match="integer margin"):
        losses.build("adsh", bits=16, num_classes=3, margin="sphereface", m=1.5)
    with pytest.raises(ValueError, match="already registered"):
        losses.register("adsh")(type(loss))


def test_similarity_matrix_matches_loop():
    gen = torch.Generator().manual_seed(9)
    a = torch.rand(6, 4, generator=gen) > 0.6
    b = torch.rand(5, 4, generator=gen) > 0.6
    expected = [[any(a[i, c] and b[j, c] for c in range(4)) for j in range(5)] for i in range(6)]
    assert similarity_matrix(a, b).tolist() == expected
    assert similarity_matrix(a.float(), b.int()).tolist() == expected


@pytest.mark.parametrize(
    ("outputs", "labels", "message"),
    [
        (torch.randn(4), torch.tensor([0, 1, 2, 0]), "n x bits=8"),
        (torch.randn(4, 7), torch.tensor([0, 1, 2, 0]), "n x bits=8"),
        (torch.randn(0, 8), torch.zeros(0, dtype=torch.long), "empty batch"),
        (torch.randn(4, 8), torch.tensor([0, 1, 2]), "batch sizes differ"),
        (torch.randn(4, 8), torch.zeros(4, 5), "width 5, expected num_classes=3"),
        (torch.randn(4, 8), torch.tensor([0.0, 1.0, 2.0, 0.0]), "integer class ids"),
        (torch.randn(4, 8), torch.tensor([0, 1, 3, 0]), r"\[0, 3\)"),
        (torch.randn(4, 8), torch.full((4, 3), 2.0), "only 0 and 1"),
        (torch.randn(4, 8), torch.zeros(4, 3, 1), "1-D class ids or 2-D"),
        (torch.randn(2, 8), torch.tensor([[1, 0, 0], [0, 0, 0]]), "at least one label"),
    ],
)
def test_bad_inputs_raise_clear_errors(outputs, labels, message):
    loss = losses.build("adsh", bits=8, num_classes=3)
    with pytest.raises(ValueError, match=message):
        loss(outputs, labels)


def test_non_tensor_inputs_raise():
    loss = losses.build("adsh", bits=8, num_classes=3)
    with pytest.raises(TypeError, match="floating-point"):
        loss(torch.ones(2, 8, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        loss(torch.randn(2, 8), [0, 1])
