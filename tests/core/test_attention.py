"""The hard-attention rollout: recorded fields, forced steps, padding, batched against looped."""

import pytest
import torch
from torch import distributions as D, nn

from hardalign.attention import HardAttention, rollout
from hardalign.estimators import build_estimator


class ToyAligner(nn.Module):
    """Emit/skip over T frames of a sequence with U labels: forced emission when the remaining frames
    equal the remaining labels, nothing after the last label. log p = emission score of the frame."""

    def __init__(self):
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(0.1))
        self.score = nn.Parameter(torch.tensor(0.5))

    def initial_state(self, memory):
        n = memory["frames"].shape[0]
        zeros = torch.zeros(n, dtype=torch.long, device=memory["frames"].device)
        return {"t": zeros, "emitted": zeros}

    def policy(self, state, memory):
        frame = memory["frames"].gather(1, state["t"].clamp_max(memory["frames"].shape[1] - 1)[:, None])[:, 0]
        return D.Bernoulli(logits=self.logit + frame)

    def forced(self, state, memory):
        remaining_frames = memory["lengths"] - state["t"]
        remaining_labels = memory["labels"] - state["emitted"]
        must_emit = (remaining_frames <= remaining_labels) & (remaining_labels > 0)
        done = remaining_labels <= 0
        return must_emit | done, must_emit.float()

    def read(self, memory, location):
        return location

    def update(self, state, memory, location, glimpse):
        valid = state["t"] < memory["lengths"]
        log_p = glimpse * self.score
        emitted = state["emitted"] + (glimpse.long() * valid.long())
        return {"t": state["t"] + 1, "emitted": emitted}, log_p, valid


def make_memory(b=3, t=7):
    g = torch.Generator().manual_seed(0)
    return {"frames": torch.randn(b, t, generator=g), "lengths": torch.tensor([7, 5, 4]), "labels": torch.tensor([3, 5, 1])}


def test_protocol_and_fields():
    model = ToyAligner()
    assert isinstance(model, HardAttention)
    memory = make_memory()
    traj = rollout(model, memory, num_samples=4, num_steps=7, generator=torch.Generator().manual_seed(1))
    for field in ("locations", "log_q", "log_p", "log_weights", "entropy", "mask", "valid"):
        assert getattr(traj, field).shape == (4, 3, 7), field
    assert traj.num_samples == 4
    # forced emission: every particle emits exactly its label count
    emitted = (traj.locations * traj.valid).sum(-1)
    assert emitted.tolist() == [[3, 5, 1]] * 4
    # forced and padding steps have log q = 0, entropy 0, and no mask; padding has log p = 0
    assert bool((traj.log_q[~traj.mask] == 0).all()) and bool((traj.entropy[~traj.mask] == 0).all())
    assert bool((traj.log_p[~traj.valid] == 0).all())
    assert traj.valid[:, 2].sum(-1).tolist() == [4] * 4  # third example has 4 frames
    assert not bool(traj.mask[:, 1].any())  # 5 labels in 5 frames: every step forced
    torch.testing.assert_close(traj.log_weights, traj.log_p - traj.log_q)


def test_rollout_feeds_the_estimators_and_gradients_reach_the_policy():
    model = ToyAligner()
    traj = rollout(model, make_memory(), num_samples=4, num_steps=7)
    out = build_estimator("vimco-seq")(traj.log_weights, traj.log_q, mask=traj.mask)
    out.loss.backward()
    assert model.logit.grad is not None and model.score.grad is not None


def test_batched_rollout_equals_one_particle_at_a_time():
    """Particle k of the batched rollout equals a K=1 rollout given particle k's decisions."""
    model = ToyAligner()
    memory = make_memory()
    traj = rollout(model, memory, num_samples=3, num_steps=7, generator=torch.Generator().manual_seed(2))

    class Replay(ToyAligner):
        def __init__(self, decisions):
            super().__init__()
            self.load_state_dict(model.state_dict())
            self.decisions, self.step = decisions, 0

        def forced(self, state, memory):
            value = self.decisions[:, self.step]
            self.step += 1
            return torch.ones_like(value, dtype=torch.bool), value

    for k in range(3):
        replay = rollout(Replay(traj.locations[k]), memory, num_samples=1, num_steps=7)
        torch.testing.assert_close(replay.log_p[0], traj.log_p[k])
        torch.testing.assert_close(replay.locations[0], traj.locations[k])
        # the free steps' log q is what the policy gives to the replayed decision
        dist = D.Bernoulli(logits=model.logit + memory["frames"])
        expected = torch.where(traj.mask[k], dist.log_prob(traj.locations[k]), torch.zeros(()))
        torch.testing.assert_close(traj.log_q[k], expected)


def test_rollout_rejects_zero_steps():
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        rollout(ToyAligner(), make_memory(), num_samples=1, num_steps=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rollout_and_estimator_on_cuda_make_no_host_sync():
    device = torch.device("cuda")
    model = ToyAligner().to(device)
    memory = {key: value.to(device) for key, value in make_memory().items()}
    estimator = build_estimator("vimco-seq")
    torch.cuda.set_sync_debug_mode("error")
    try:
        traj = rollout(model, memory, num_samples=8, num_steps=7, generator=torch.Generator(device=device).manual_seed(0))
        out = estimator(traj.log_weights, traj.log_q, mask=traj.mask)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    out.loss.backward()
    assert out.objective.device.type == "cuda"
