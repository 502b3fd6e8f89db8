"""Device placement without a GPU: a training step creates no tensor off its inputs' device.

Under ``torch.device("meta")`` as the default device, any tensor that code creates without taking
the device from an input lands on ``meta``; mixing it with the CPU inputs then fails, or it shows
up among the logged terms. That is the class of bug that crashes a CUDA run (a CPU scalar next to
CUDA tensors), caught on a CPU-only machine.
"""

from __future__ import annotations

import pytest
import torch

from hardalign.estimators import ESTIMATORS, build_estimator
from hardalign.objective import training_terms
from tests.speech.toy import toy_batch, toy_utterances


def speech(**options):
    from hardalign.speech.model import HardAlignmentRecognizer

    model = HardAlignmentRecognizer(12, 8, hidden_size=16, encoder_layers=1, decision_hidden=16, label_embedding=8,
                                    posterior_hidden=16, baseline_hidden=8, dropout=0.1, **options)
    return model, toy_batch(toy_utterances(4, num_phones=8, dim=12))


def ram():
    from hardalign.vision.ram import RAM

    generator = torch.Generator().manual_seed(0)
    batch = {"images": torch.rand(4, 1, 20, 30, generator=generator), "labels": torch.randint(0, 10, (4,), generator=generator)}
    return RAM(num_glimpses=3, patch_size=4, num_scales=2, glimpse_hidden=8, hidden_size=16), batch


def saccader():
    from hardalign.vision.saccader import Saccader

    generator = torch.Generator().manual_seed(0)
    batch = {"images": torch.rand(4, 1, 24, 20, generator=generator), "labels": torch.randint(0, 10, (4,), generator=generator)}
    return Saccader(num_glimpses=3, channels=8, hidden_size=8, key_size=4), batch  # no pretraining: stage 3 at once


def sbn():
    from hardalign.sbn import SigmoidBeliefNet

    return SigmoidBeliefNet(20, (6, 4), baseline_hidden=5), {"x": torch.bernoulli(torch.full((4, 20), 0.5))}


MODELS = {
    "speech-lattice": lambda: speech(posterior_kind="lattice"),
    "speech-lattice-shared": lambda: speech(posterior_kind="lattice", posterior_encoder="shared"),
    "speech-recurrent": lambda: speech(posterior_kind="recurrent"),
    "speech-prior": lambda: speech(proposal="prior"),
    "ram": ram,
    "saccader": saccader,
    "sbn": sbn,
}


@pytest.mark.parametrize("estimator_name", sorted(ESTIMATORS))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_training_step_keeps_every_tensor_on_the_inputs_device(model_name, estimator_name):
    torch.manual_seed(0)
    model, batch = MODELS[model_name]()
    estimator = build_estimator(estimator_name, **({"baseline": "learned"} if estimator_name == "reinforce" else {}))
    with torch.device("meta"):  # the default device for tensors created without one
        terms = training_terms(model(batch, num_samples=3, step=2), estimator)
        terms["loss"].backward()
    assert {name: value.device.type for name, value in terms.items()} == {name: "cpu" for name in terms}


def test_speech_decoding_keeps_every_tensor_on_the_inputs_device():
    from hardalign.speech.decode import beam_search, greedy_decode

    model, batch = speech()
    model.eval()
    with torch.device("meta"), torch.no_grad():
        greedy = greedy_decode(model, batch["features"], batch["feature_lengths"])
        beam = beam_search(model, batch["features"], batch["feature_lengths"], beam_size=2)
    assert len(greedy) == len(beam) == 4
