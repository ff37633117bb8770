"""The evaluation protocol's models: trained together (vmap) they are the models trained one after another."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from dcbench_tesla.evaluation import (
    TOGETHER_MAX_STEP_IMAGES,
    _fresh_model,
    _model_seed,
    evaluate_images,
    random_real_subset,
    train_model,
    train_models,
    train_models_together,
    trains_together,
)
from dcbench_tesla.protocols import PROTOCOLS

CPU = torch.device("cpu")


@pytest.fixture
def protocol():
    return PROTOCOLS.get("short").replace(num_models=3, epochs=4)


def _parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("soft", [False, True], ids=["hard-labels", "soft-labels"])
def test_models_trained_together_equal_models_trained_one_after_another(digits, protocol, soft):
    images, labels = random_real_subset(digits, 1, seed=5)
    if soft:
        labels = F.softmax(
            torch.randn(labels.shape[0], digits.num_classes, generator=torch.Generator().manual_seed(1)), 1
        )
    seeds = [11, 12, 13]
    together = train_models_together("convnet", images, labels, digits, 0.05, protocol, seeds, CPU)
    for seed, model in zip(seeds, together, strict=True):
        alone = train_model("convnet", images, labels, digits, 0.05, protocol, seed, CPU)
        moved = (_parameters(alone) - _parameters(_fresh_model("convnet", digits, seed, CPU))).abs().max()
        assert moved > 1e-3  # training changed the model, so agreement below is not agreement of initialisations
        torch.testing.assert_close(_parameters(model), _parameters(alone), rtol=1e-4, atol=1e-5)


def test_each_model_of_a_together_pass_reports_every_epoch(digits, protocol):
    images, labels = random_real_subset(digits, 1, seed=0)
    calls = []
    train_models(
        "convnet", images, labels, digits, 0.01, protocol, [1, 2, 3], CPU, lambda: calls.append(1), "val", True
    )
    assert len(calls) == protocol.num_models * protocol.epochs


def test_which_models_train_together(digits, protocol):
    assert trains_together("convnet", digits, protocol, num_images=10)
    assert trains_together("convnet", digits, protocol, num_images=TOGETHER_MAX_STEP_IMAGES)
    # a step above the bound (and the whole pool, 256 images per step) trains one model at a time
    assert not trains_together("convnet", digits, protocol, num_images=TOGETHER_MAX_STEP_IMAGES + 1)
    assert not trains_together("convnet", digits, protocol, num_images=digits.train_images.shape[0])
    assert not trains_together("convnet", digits, protocol.replace(num_models=1), num_images=10)
    # running statistics (BatchNorm) and models without a functional forward train one at a time
    assert not trains_together("resnet18_bn", digits, protocol, num_images=10)


def test_a_model_that_cannot_train_together_is_refused_by_name(digits, protocol):
    images, labels = random_real_subset(digits, 1, seed=0)
    with pytest.raises(ValueError, match="resnet18_bn cannot train together"):
        train_models_together("resnet18_bn", images, labels, digits, 0.01, protocol, [1, 2], CPU)


def test_evaluate_images_gives_the_same_accuracies_together_as_one_after_another(digits, protocol):
    """An IPC-1 set trains together; its accuracies are those of the models trained alone (to one test image)."""
    images, labels = random_real_subset(digits, 1, seed=2)
    result = evaluate_images(images, labels, digits, ["convnet"], 0.01, protocol, 7, CPU).by_model["convnet"]
    seeds = [_model_seed(7, k) for k in range(protocol.num_models)]
    alone = train_models("convnet", images, labels, digits, 0.01, protocol, seeds, CPU, together=False)
    one_image = 1 / digits.test_images.shape[0]
    assert len(result.accuracies) == protocol.num_models
    for together_accuracy, alone_accuracy in zip(result.accuracies, alone, strict=True):
        assert abs(together_accuracy - alone_accuracy) <= one_image + 1e-12


def test_a_model_with_dropout_trains_from_its_seed_whatever_ran_before(digits, protocol):
    """The ViT draws dropout masks from torch's global generators: its training must depend on its seed only."""
    images, labels = random_real_subset(digits, 1, seed=0)
    one_model = protocol.replace(num_models=1, epochs=2)
    state = torch.get_rng_state()
    first = train_model("vit", images, labels, digits, 0.01, one_model, 3, CPU)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global stream is left where it was
    torch.rand(1000)  # something else ran in between (another model, a worker's earlier task)
    again = train_model("vit", images, labels, digits, 0.01, one_model, 3, CPU)
    assert torch.equal(_parameters(first), _parameters(again))
    other = train_model("vit", images, labels, digits, 0.01, one_model, 4, CPU)
    assert not torch.equal(_parameters(first), _parameters(other))


def test_an_expert_with_dropout_trains_from_its_seed_whatever_ran_before(digits):
    from dcbench_tesla.experts import ExpertConfig
    from dcbench_tesla.experts.training import train_one_expert

    small = dataclasses.replace(digits, train_images=digits.train_images[:64], train_labels=digits.train_labels[:64])
    config = ExpertConfig(dataset="digits", model="vit", num_experts=1, epochs=1, batch_size=32)
    first, _ = train_one_expert(small, config, 0, CPU)
    torch.rand(1000)
    again, _ = train_one_expert(small, config, 0, CPU)
    assert torch.equal(first, again) and not torch.equal(first[0], first[1])
