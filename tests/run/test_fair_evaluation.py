"""A run's fair evaluation: the test split read only at the end, the same-rule baseline, the scores."""

import json

import pytest
import spy_data
import torch
from click.testing import CliRunner

from dcbench_tesla import make, spec
from dcbench_tesla.cli import main
from dcbench_tesla.data import load_dataset
from dcbench_tesla.evaluation import random_real_subset
from dcbench_tesla.scores import ddrs

SLA = [
    *("--set", "labels=sla", "--set", "num_experts=2", "--set", "expert_train_epochs=3"),
    *("--set", "max_start_epoch=2", "--set", "expert_epochs=1", "--set", "syn_steps=2"),
]
TINY = ["--iterations", "2", "--num-eval", "1", "--eval-epochs", "2", "--no-progress"]


@pytest.mark.slow
def test_soft_label_run_reads_test_last_and_its_baseline_trains_on_the_teachers_labels(tmp_path, monkeypatch):
    from dcbench_tesla import scores

    log: list = []
    spy_data.install(monkeypatch, log)
    trained: dict[str, tuple] = {}
    real_evaluate_images = scores.evaluate_images

    def recording(images, labels, **kwargs):
        trained[kwargs["label"]] = (images.clone(), labels.clone())
        return real_evaluate_images(images, labels, **kwargs)

    monkeypatch.setattr(scores, "evaluate_images", recording)
    out = tmp_path / "run"
    args = ["run", "--method", "tesla", "--ipc", "2", *SLA, *TINY, "--real", "--eval-every", "1", "--output", out]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output

    # the test split: never read before the final evaluation (validation only for --eval-every), read after it
    assert spy_data.early_test_reads(log) == []
    assert any(event == "test" for event, _ in log[[e for e, _ in log].index("final") :])
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    assert all("val_acc" in s for s in steps)

    # the same-rule baseline trains on the random subset labelled by the teacher at the target step of a
    # segment drawn from the run's seed (computed here by hand, not through relabel)
    images, labels = trained["baseline (same label rule)"]
    dataset = load_dataset("digits")
    subset, hard = random_real_subset(dataset, 2, 0)
    assert torch.equal(images, subset)
    card = spec("tesla").nearest_card("digits", 2).options  # the run derives its settings from this card
    tiny = {"labels": "sla", "num_experts": 2, "expert_train_epochs": 3, "max_start_epoch": 2, "expert_epochs": 1}
    method = make("tesla", **{**card, **tiny})
    method.reset(dataset, 2, 0)  # the experts the run trained, from the cache
    generator = torch.Generator().manual_seed(0)
    expert = int(torch.randint(2, (1,), generator=generator))
    start = int(torch.randint(2, (1,), generator=generator))
    teacher = method.experts.trajectory(expert)[start + 1].float()
    with torch.no_grad():
        expected = torch.softmax(method.flat.forward(teacher, subset), dim=1)
    assert labels.shape == (20, 10) and labels.is_floating_point()
    torch.testing.assert_close(labels, expected)
    assert torch.equal(trained["random real subset"][1], hard)  # the hard-label baseline is still there
    syn_images, syn_labels = trained["evaluate"]
    assert torch.equal(trained["evaluate (hard labels)"][1], syn_labels.argmax(dim=1))

    record = json.loads((out / "result.json").read_text())
    assert record["baseline_same_rule"]["label_rule"] == "soft" and record["eval_split"] == "test"
    s = record["scores"]["convnet"]
    assert s["acc_syn"] == record["evaluation"]["by_model"]["convnet"]["mean"]
    assert s["acc_syn_hard"] == record["evaluation_hard_labels"]["by_model"]["convnet"]["mean"]
    assert s["acc_rdm_same_rule"] == record["baseline_same_rule"]["by_model"]["convnet"]["mean"]
    assert s["acc_real_hard"] == record["real_hard"]["by_model"]["convnet"]["mean"]
    assert s["hlr"] == pytest.approx(s["acc_real_hard"] - s["acc_syn_hard"])
    assert s["ior"] == pytest.approx(s["acc_syn"] - s["acc_rdm_same_rule"])
    assert s["ddrs"] == pytest.approx(ddrs(s["hlr"], s["ior"], 0.5))
    assert "DDRS" in result.output and "same label rule (soft)" in result.output

    # dcbench eval rebuilds the method from the file to label the subset by the same rule: the same scores
    trained.clear()
    evaluated = tmp_path / "eval.json"
    args = ["eval", out / "synthetic_set.safetensors", "--num-eval", "1", "--eval-epochs", "2", "--output", evaluated]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(trained["baseline (same label rule)"][1], expected)
    assert json.loads(evaluated.read_text())["scores"]["convnet"] == pytest.approx(s)


class Stop(Exception):
    """Raised by the fake pruner below."""


def test_on_eval_receives_each_validation_score_and_can_stop_the_run(tmp_path):
    from dcbench_tesla.run.request import RunRequest
    from dcbench_tesla.run.runner import run

    calls = []
    common = {"method": "dm", "ipc": 1, "iterations": 4, "eval_every": 2, "num_eval_models": 1, "eval_epochs": 2}
    common |= {"options": {"batch_real": "16"}, "progress": False, "baseline": False, "real": False}
    run(RunRequest(**common, output=tmp_path / "a", on_eval=lambda it, acc: calls.append((it, acc))))
    logged = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert calls == [(s["iteration"], s["val_acc"]) for s in logged if "val_acc" in s] and [c[0] for c in calls] == [
        2,
        4,
    ]

    def prune(iteration, accuracy):  # what dcbench tune's pruner does: raise to stop the trial
        raise Stop(iteration)

    with pytest.raises(Stop):
        run(RunRequest(**common, output=tmp_path / "b", on_eval=prune))
    assert not (tmp_path / "b" / "result.json").exists()
