"""The trajectory-matching distiller (mtt, tesla, tesla-exact) with a fake expert source."""

import pytest
import torch

import dcbench_tesla as dc
from dcbench_tesla.errors import DivergenceError, UserError
from dcbench_tesla.matching import MatchingGradients
from dcbench_tesla.models import build_model
from dcbench_tesla_methods.trajectory_matching_distiller import SyntheticBatches

VARIANTS = {"mtt": "unrolled", "tesla": "tesla", "tesla-exact": "adjoint"}
SMALL = dict(iterations=3, syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_img=10.0, dsa_strategy="none")


class FakeExperts:
    """A fake expert source: random trajectories near a real initialisation (test isolation only)."""

    def __init__(self, num_params, epochs=3, num_experts=2):
        g = torch.Generator().manual_seed(1)
        init = torch.cat([p.detach().flatten() for p in build_model("convnet", 1, 10, 8).parameters()])
        assert init.numel() == num_params
        self.trajectories = [
            init + 0.01 * torch.randn(epochs + 1, num_params, generator=g).cumsum(0) for _ in range(num_experts)
        ]
        self.num_experts, self.epochs = num_experts, epochs

    def trajectory(self, index):
        return self.trajectories[index]


@pytest.fixture(scope="module")
def experts():
    num_params = sum(p.numel() for p in build_model("convnet", 1, 10, 8).parameters())
    return FakeExperts(num_params)


def make(method, experts, **options):
    return dc.make(method, dc.RunContext(experts=experts), **{**SMALL, **options})


def test_variants_differ_only_in_engine_and_label_rule():
    specs = {m: dc.spec(m) for m in VARIANTS}
    for method, engine in VARIANTS.items():
        assert specs[method].kwargs == {"engine": engine, "labels": "hard"}
        assert specs[method].entry_point == specs["mtt"].entry_point
        for card, mtt_card in zip(specs[method].config_cards, specs["mtt"].config_cards, strict=True):
            options = dict(card.options)
            if method != "mtt" and card.dataset == "imagenet64":
                assert options.pop("labels") == "sla"  # TESLA's Soft Label Assignment on ImageNet-1K
            assert options == mtt_card.options
    assert specs["tesla"].config_cards == specs["tesla-exact"].config_cards


def test_every_paper_card_names_its_source():
    for card in dc.spec("tesla").config_cards:
        assert card.source
    card = dc.spec("tesla").card_for("cifar100", 50)
    assert card.options["syn_steps"] == 50 and card.options["batch_syn"] == 100 and card.zca is True


@pytest.mark.parametrize("method", sorted(VARIANTS))
def test_step_updates_images_and_is_reproducible(method, experts, digits):
    first = make(method, experts)
    first.reset(digits, 1, seed=5)
    start = first.synthetic_set().images
    infos = [first.step() for _ in range(2)]
    after = first.synthetic_set()
    assert not torch.equal(start, after.images)
    assert all(0 < info["loss"] < 10 and info["syn_lr"] > 0 for info in infos)
    second = make(method, experts)
    second.reset(digits, 1, seed=5)
    for _ in range(2):
        second.step()
    assert torch.equal(second.synthetic_set().images, after.images)
    assert after.lr == pytest.approx(second.synthetic_set().lr)


def test_sla_labels_are_the_teachers_softmax_at_the_target_step(experts, digits):
    d = make("tesla", experts, labels="sla")
    d.reset(digits, 1, seed=0)
    images_before = d.state_dict()["images"]
    info = d.step()
    syn = d.synthetic_set()
    assert syn.label_kind == "soft" and torch.allclose(syn.labels.sum(1), torch.ones(10))
    target = experts.trajectory(info["expert"])[info["start_epoch"] + SMALL["expert_epochs"]]
    with torch.no_grad():  # the labels of an iteration come from the images before its update
        teacher = torch.softmax(d.flat.forward(target, images_before), 1)
    torch.testing.assert_close(syn.labels, teacher)


def test_label_strategies(experts, digits):
    hard = make("mtt", experts)
    hard.reset(digits, 1, 0)
    hard.step()
    assert hard.synthetic_set().label_kind == "hard"
    learned = make("mtt", experts, labels="learned", lr_label=1e6)
    learned.reset(digits, 1, 0)
    before = learned.synthetic_set().labels
    assert before.argmax(1).tolist() == list(range(10)) and before.max() > 0.99  # logits 10 on the class
    logits = learned.state_dict()["label_logits"]
    learned.step()
    assert not torch.equal(learned.state_dict()["label_logits"], logits)
    last = make("tesla", experts, labels="sla-last")
    last.reset(digits, 1, 0)
    last.step()
    assert last.synthetic_set().label_kind == "soft"


def test_syn_lr_is_kept_positive(experts, digits):
    d = make("mtt", experts, lr_lr=1e6, min_syn_lr=1e-4)
    d.reset(digits, 1, 0)
    for _ in range(3):
        info = d.step()
        assert info["syn_lr"] >= 1e-4 * (1 - 1e-6)  # float32 rounding of the clamp


def test_nan_gradient_stops_the_run_and_keeps_the_last_good_set(experts, digits, monkeypatch):
    d = make("tesla-exact", experts)
    d.reset(digits, 1, 0)
    d.step()
    good = d.synthetic_set()

    def nan_engine(problem):
        nan = torch.tensor(float("nan"))
        return MatchingGradients(nan, torch.zeros_like(problem.images), None, nan, problem.theta_start)

    monkeypatch.setattr(d, "engine", nan_engine)
    with pytest.raises(DivergenceError, match="NaN or inf at iteration 2.*lr_img"):
        d.step()
    assert torch.equal(d.synthetic_set().images, good.images)
    assert d.synthetic_set().lr == good.lr


def test_state_dict_resume_is_bitwise_identical(experts, digits):
    reference = make("tesla", experts, batch_syn=4, labels="sla")
    reference.reset(digits, 2, 3)
    for _ in range(4):
        reference.step()
    first = make("tesla", experts, batch_syn=4, labels="sla")
    first.reset(digits, 2, 3)
    for _ in range(2):
        first.step()
    state = first.state_dict()
    resumed = make("tesla", experts, batch_syn=4, labels="sla")
    resumed.reset(digits, 2, 3)
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.step()
    assert torch.equal(resumed.synthetic_set().images, reference.synthetic_set().images)
    assert torch.equal(resumed.synthetic_set().labels, reference.synthetic_set().labels)


def test_synthetic_batches_cover_every_image_before_reshuffling():
    batches = SyntheticBatches(10, 4, torch.Generator().manual_seed(0))
    first_epoch = torch.cat([batches.next() for _ in range(2)])
    assert first_epoch.unique().numel() == 8  # two disjoint chunks of one permutation
    assert SyntheticBatches(10, None, torch.Generator()).next().tolist() == list(range(10))


def test_short_experts_are_refused(digits):
    num_params = sum(p.numel() for p in build_model("convnet", 1, 10, 8).parameters())
    d = make("mtt", FakeExperts(num_params, epochs=2), max_start_epoch=5, expert_epochs=2)
    with pytest.raises(UserError, match="max_start_epoch \\+ expert_epochs = 7"):
        d.reset(digits, 1, 0)


def test_invalid_options_are_user_errors():
    with pytest.raises(UserError, match="syn_steps"):
        dc.make("mtt", syn_steps=0)
    with pytest.raises(UserError, match="'labels' must be one of"):
        dc.make("mtt", labels="fuzzy")
    with pytest.raises(UserError, match="unknown gradient engine 'adjiont'.*Did you mean 'adjoint'"):
        dc.make("mtt", engine="adjiont")
