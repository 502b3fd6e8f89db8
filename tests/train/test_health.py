"""The training health report: the monitor on synthetic term streams, the trainer's hooks, and
tiny real speech runs (a broken emission prior warns, the default config stays silent)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from hardalign.train.health import HealthMonitor, HealthThresholds, check_eval, check_train, watched_metric

REPO = Path(__file__).resolve().parents[2]


def healthy(step: int) -> dict[str, float]:
    """A stream that trains: emission at free steps near the data's rate, ESS well above 1."""
    wobble = 0.02 * ((step * 7) % 5 - 2)
    return {"emit_rate": 0.36 + wobble / 4, "free_emit_rate": 0.34 + wobble, "ess": 2.2 + wobble * 10,
            "entropy": 55.0 - 0.01 * step + wobble, "grad_norm": 40.0 + 100 * wobble, "loss": 400.0 - step}


def feed(monitor: HealthMonitor, stream, start: int = 1) -> list:
    return [w for step, terms in enumerate(stream, start) for w in monitor.observe_train(step, terms)]


def test_silent_on_a_healthy_stream():
    monitor = HealthMonitor(num_samples=4)
    assert feed(monitor, [healthy(step) for step in range(1, 201)]) == []
    for step, per in enumerate([0.9, 0.8, 0.82, 0.7, 0.71, 0.72, 0.69, 0.6], 1):
        assert monitor.observe_eval(step, {"per": per}) == []  # no task: per is not watched
    task = type("Speech", (), {"metrics_to_minimize": ("per",)})()
    watched = HealthMonitor(num_samples=4, task=task)
    assert [watched.observe_eval(step, {"per": 0.9 - 0.05 * step}) for step in range(10)] == [[]] * 10
    assert monitor.warnings == watched.warnings == []


@pytest.mark.parametrize(
    "name, free_emit_rate",
    [("emission_collapse", 0.01), ("emission_collapse", 0.0), ("emission_explosion", 1.0), ("emission_explosion", 0.8)],
)
def test_emission_collapse_and_explosion_fire_once_per_onset(name, free_emit_rate):
    monitor = HealthMonitor(num_samples=2)
    broken = {**healthy(0), "free_emit_rate": free_emit_rate}
    stream = [healthy(1)] + [broken] * 2 + [healthy(2)] + [broken] * 6 + [healthy(3)] * 2 + [broken] * 3
    warnings = feed(monitor, stream)
    # patience 3: the first 2-interval burst is ignored, the 6-interval one fires once (at its
    # third interval, step 7), and after it cleared the condition fires again at its next onset
    assert [(w.name, w.step) for w in warnings] == [(name, 7), (name, 15)]
    first = warnings[0]
    assert first.numbers["free_emit_rate"] == free_emit_rate and first.numbers["emit_rate"] == broken["emit_rate"]
    assert first.message.startswith(f"health: {name} at step 7: ") and "free_emit_rate=" in first.message
    assert "what to do: docs/training.md" in first.message and "\n" not in first.message


def test_explosion_threshold_reachable_at_high_label_rates():
    # with 0.5 labels per step, 2.5x the rate is above 1: the threshold is the midpoint to 1 instead
    monitor = HealthMonitor(num_samples=2, thresholds=HealthThresholds(emit_patience=1))
    assert monitor.observe_train(1, {"emit_rate": 0.5, "free_emit_rate": 0.7}) == []
    assert [w.name for w in monitor.observe_train(2, {"emit_rate": 0.5, "free_emit_rate": 0.8})] == ["emission_explosion"]


def test_emission_check_needs_both_rates():
    monitor = HealthMonitor(num_samples=2, thresholds=HealthThresholds(emit_patience=1))
    assert monitor.observe_train(1, {"emit_rate": 0.4}) == []  # speech today: emit_rate alone is the data's rate
    assert monitor.observe_train(2, {"free_emit_rate": 0.0}) == []
    assert monitor.observe_train(3, {"emit_rate": 0.0, "free_emit_rate": 0.0}) == []


def test_ess_at_one_fires_after_patience_and_scales_with_k():
    monitor = HealthMonitor(num_samples=8)  # ESS at 1: ess <= 1 + 0.05 * 7 = 1.35
    stuck = [{**healthy(step), "ess": 1.3} for step in range(9)]
    assert feed(monitor, stuck + [healthy(0)] + stuck) == []  # 9 < 10 intervals, twice
    warnings = feed(monitor, [{**healthy(0), "ess": 1.01}] * 25, start=100)
    assert [(w.name, w.step) for w in warnings] == [("ess_at_one", 100)]  # the 9 stuck intervals before it count
    assert warnings[0].numbers == {"ess": 1.01, "num_samples": 8.0}
    assert HealthMonitor(num_samples=1).observe_train(1, {"ess": 1.0}) == []  # K = 1: ESS is always 1


@pytest.mark.parametrize("maximise", [False, True])
def test_no_improvement_after_n_evaluations(maximise):
    sign = -1.0 if maximise else 1.0  # sbn's bound is maximised, per is minimised
    task = type("Task", (), {"metrics_to_minimize": () if maximise else ("per",)})()
    name = "bound" if maximise else "per"
    monitor = HealthMonitor(num_samples=4, task=task)
    values = [0.9, 0.8, 0.795, 0.81, 0.8, 0.799, 0.85, 0.83, 0.9, 0.7, 0.7]  # 0.795: under 1% better than 0.8
    fired = [(step, w.name) for step, v in enumerate(values) for w in monitor.observe_eval(step, {name: sign * v})]
    assert fired == [(6, "no_improvement")]
    numbers = monitor.warnings[0].numbers
    assert numbers[name] == sign * 0.85 and numbers[f"best_{name}"] == sign * 0.8 and numbers["best_step"] == 1.0
    assert numbers["evaluations"] == 5.0


def test_watched_metric_direction():
    speech = type("Speech", (), {"metrics_to_minimize": ("per",)})()
    vision = type("Vision", (), {"metrics_to_minimize": ("error",)})()
    custom = type("Custom", (), {"metrics_to_maximize": ("auc",)})()
    assert watched_metric(speech, {"per": 0.2, "ref_tokens": 10}) == ("per", False)
    assert watched_metric(vision, {"error": 0.1, "accuracy": 0.9}) == ("error", False)
    assert watched_metric(custom, {"auc": 0.7}) == ("auc", True)
    assert watched_metric(None, {"bound": -98.0, "elbo": -99.0}) == ("bound", True)
    assert watched_metric(None, {"mse": 0.1}) is None


def test_a_perfect_error_rate_does_not_warn():
    monitor = HealthMonitor(num_samples=2, task=type("V", (), {"metrics_to_minimize": ("error",)})())
    assert [w for step in range(10) for w in monitor.observe_eval(step, {"error": 0.0})] == []


def test_entropy_collapse_early_only():
    monitor = HealthMonitor(num_samples=2)
    stream = [{"entropy": 50.0}] + [{"entropy": 0.1}] * 3
    assert [(w.name, w.step) for w in feed(monitor, stream)] == [("entropy_collapse", 4)]
    late = HealthMonitor(num_samples=2, thresholds=HealthThresholds(entropy_early_steps=2))
    assert feed(late, stream) == []  # after the early window a sharp proposal may be the goal


def test_grad_explosion_against_the_early_median():
    monitor = HealthMonitor(num_samples=2)
    stream = [{"grad_norm": g} for g in (40.0, 50.0, 30.0, 45.0, 35.0, 3000.0, 5000.0, 40.0, 4100.0)]
    warnings = feed(monitor, stream)
    assert [(w.name, w.step) for w in warnings] == [("grad_explosion", 7), ("grad_explosion", 9)]
    assert warnings[0].numbers == {"grad_norm": 5000.0, "grad_norm_reference": 40.0}


def test_non_finite_and_missing_terms_are_ignored():
    monitor = HealthMonitor(num_samples=4, thresholds=HealthThresholds(emit_patience=1, ess_patience=1))
    assert monitor.observe_train(1, {"emit_rate": float("nan"), "free_emit_rate": 0.0, "ess": float("inf")}) == []
    assert monitor.observe_train(2, {"loss": 1.0, "ess": True}) == []
    assert monitor.observe_eval(3, {"per": "n/a"}) == []


def test_invalid_thresholds():
    with pytest.raises(ValueError, match="ess_patience=0"):
        HealthThresholds(ess_patience=0)
    with pytest.raises(ValueError, match="emit_low < 1 < emit_high"):
        HealthThresholds(emit_high=0.9)


# -- the trainer's hooks: one monitor per run (per logger), records through the logger --

class FakeLogger:
    def __init__(self):
        self.records, self.lines = [], []

    def log(self, step, split, values, echo=None):
        self.records.append({"step": step, "split": split, **values})
        self.lines.append(echo)


@dataclass
class FakeTrain:
    num_samples: int = 2
    task: str = "timit"
    health_checks: bool = True


@dataclass
class FakeConfig:
    train: FakeTrain


def test_hooks_log_records_and_lines_per_run():
    speech = type("Speech", (), {"metrics_to_minimize": ("per",)})()
    config, first, second = FakeConfig(FakeTrain()), FakeLogger(), FakeLogger()
    collapsed = {"emit_rate": 0.37, "free_emit_rate": 0.0}
    for step in (1, 2, 3, 4):
        check_train(first, config, speech, step, collapsed)
    check_train(second, config, speech, 1, collapsed)  # another run: its own monitor, its own patience
    assert [r["warning"] for r in first.records] == ["emission_collapse"] and second.records == []
    record = first.records[0]
    assert record["step"] == 3 and record["split"] == "health" and record["free_emit_rate"] == 0.0
    assert json.loads(json.dumps(record)) == record
    assert first.lines[0] == record["message"] and 'recipes/timit/README.md, "When training stalls' in record["message"]
    for step in range(6):
        check_eval(first, config, speech, step, {"per": 1.0, "sub": 0.0})
    assert [r["warning"] for r in first.records] == ["emission_collapse", "no_improvement"]


def test_hooks_off_with_health_checks_false():
    logger = FakeLogger()
    config = FakeConfig(FakeTrain(health_checks=False))
    for step in range(1, 10):
        assert check_train(logger, config, None, step, {"emit_rate": 0.37, "free_emit_rate": 0.0, "ess": 1.0}) == []
        assert check_eval(logger, config, None, step, {"bound": -100.0}) == []
    assert logger.records == []


# -- tiny real speech runs: a broken emission prior warns, the default config stays silent --

from tests.speech.test_recipe import TINY_MODEL, tiny_corpus  # noqa: E402,F401 (a module-scoped fixture)


def speech_run(corpus: Path, out: Path, *extra: str) -> list[dict]:
    from hardalign.train.config import resolve_config
    from hardalign.train.loop import train

    config = resolve_config(
        str(REPO / "recipes/timit/conf/vimco-seq.yaml"),
        ["--data-dir", str(corpus), "--out-dir", str(out), "--max-steps", "6", *TINY_MODEL, *extra],
    )
    train(config)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "broken, expected, stuck",
    # without the CTC emit cue, which would otherwise pull p's emissions back to the CTC head's spikes
    [(["--proposal", "prior", "--emit-prior", "0.001", "--ctc-emit-prior", "false"], "emission_collapse", True),
     (["--proposal", "prior", "--emit-prior", "0.999", "--ctc-emit-prior", "false"], "emission_explosion", False)],
    ids=["emit-prior-0.001", "emit-prior-0.999"],
)
def test_broken_emission_prior_warns(broken, expected, stuck, tiny_corpus, tmp_path, capsys):
    records = speech_run(tiny_corpus, tmp_path / "run", *broken, "--eval-every", "1", "--ctc-warmup", "0")  # the bound from step 1
    health = [r for r in records if r["split"] == "health"]
    train_lines = [r for r in records if r["split"] == "train"]
    # emit_rate is the data's labels per step, as in a healthy run; the free steps show the fault
    assert all(0.2 < r["emit_rate"] < 0.6 for r in train_lines)
    assert [(r["warning"], r["step"]) for r in health if r["warning"].startswith("emission")] == [(expected, 3)]
    if stuck:  # a model that never emits scores PER 1 (all deletions) at all six evaluations:
        # the first is the best, the sixth is the fifth without improvement
        assert [r["step"] for r in health if r["warning"] == "no_improvement"] == [6]
    err = capsys.readouterr().err
    assert f"health: {expected} at step 3: " in err and "recipes/timit/README.md" in err


def test_default_config_is_silent(tiny_corpus, tmp_path, capsys):
    """The recipe config, its CTC warm-up (half of the 6 steps, decoding nothing yet) included."""
    records = speech_run(tiny_corpus, tmp_path / "run", "--eval-every", "1")
    assert [r for r in records if r["split"] == "health"] == []
    assert len([r for r in records if r["split"] == "train"]) == 6 and "health:" not in capsys.readouterr().err
    bound = [r for r in records if r["split"] == "train" and "warmup" not in r]
    assert [r["step"] for r in bound] == [4, 5, 6]
    # the emission rate at free steps stays near the data's rate
    assert all(0.8 < r["free_emit_rate"] / r["emit_rate"] < 1.1 for r in bound)


def test_a_warmup_stage_is_not_checked_and_sets_no_reference():
    """Intervals logging ``warmup`` (e.g. the speech model's CTC warm-up, which decodes nothing yet)
    neither warn nor set the dev or gradient references; the early windows count from their end."""
    monitor = HealthMonitor(num_samples=4, thresholds=HealthThresholds(plateau_evals=2, grad_reference=2))
    for step in range(10, 60, 10):
        assert monitor.observe_train(step, {"warmup": 1.0, "grad_norm": 0.01, "ess": 1.0}) == []
        assert monitor.observe_eval(step, {"bound": -100.0}) == []
    monitor.observe_train(60, {"grad_norm": 5.0, "entropy": 10.0})
    monitor.observe_train(70, {"grad_norm": 5.0, "entropy": 10.0})
    assert monitor.observe_train(80, {"grad_norm": 6.0}) == []  # not 600x the warm-up's 0.01
    assert monitor.observe_eval(80, {"bound": -90.0}) == []
    assert [w.name for w in monitor.observe_train(90, {"entropy": 0.01}) + monitor.observe_train(100, {"entropy": 0.01}) + monitor.observe_train(110, {"entropy": 0.01})] == ["entropy_collapse"]
