"""A tiny task for the trainer's tests: Bernoulli latents whose sampling noise travels in the batch.

The uniforms that decide the samples are drawn per *global* batch from a generator seeded by
(seed, epoch, batch) and sliced per rank, so a 2-rank run sees exactly the noise of a
single-process run with the same global batch. Options inject a NaN loss or a crash at a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import distributions as D
from torch import nn

from hardalign.attention import Trajectory
from hardalign.objective import LatentOutput
from hardalign.train import shard_batches


@dataclass
class ToyConfig:
    num_examples: int = 64
    dim: int = 6
    latents: int = 5
    nan_at_step: Union[int, None] = None  # model step index (0-based) whose loss is NaN
    crash_at_step: Union[int, None] = None  # model step index at which forward raises
    global_noise: bool = False  # draw the noise from the global torch RNG instead of the batch
    vector_term: bool = False  # wrongly return a per-example term


class ToyModel(nn.Module):
    def __init__(self, config: ToyConfig, with_baseline: bool):
        super().__init__()
        self.config = config
        self.encoder = nn.Linear(config.dim, config.latents)
        self.decoder = nn.Linear(config.latents, config.dim)
        self.baseline_net = nn.Linear(config.dim, 1) if with_baseline else None

    def forward(self, batch, *, num_samples, step):
        if self.config.crash_at_step is not None and step == self.config.crash_at_step:
            raise RuntimeError(f"simulated crash at step index {step}")
        x = batch["x"]  # [B, D]
        if self.config.global_noise:
            uniforms = torch.rand(num_samples, x.shape[0], self.config.latents)
        else:
            uniforms = batch["u"]  # [K, B, H]
        if uniforms.shape[0] != num_samples:
            raise ValueError("toy task: K in the batch differs from num_samples")
        q = D.Bernoulli(logits=self.encoder(x).expand(num_samples, -1, -1))  # [K, B, H]
        z = (uniforms < q.probs).to(x.dtype).detach()
        log_q = q.log_prob(z).sum(-1)  # [K, B]
        log_prior = D.Bernoulli(probs=torch.full_like(z, 0.5)).log_prob(z).sum(-1)
        log_lik = -0.5 * ((x - self.decoder(z)) ** 2).sum(-1)  # [K, B]
        log_weights = log_prior + log_lik - log_q
        baseline = None
        if self.baseline_net is not None:
            baseline = self.baseline_net(x).squeeze(-1).expand(num_samples, -1)  # [K, B]
        losses = {}
        if self.config.nan_at_step is not None and step == self.config.nan_at_step:
            losses["injected_nan"] = torch.tensor(float("nan"))
        metrics = {"log_lik": log_lik.mean().detach()}
        if self.config.vector_term:
            metrics["per_example"] = log_lik.mean(0).detach()
        trajectory = Trajectory.from_log_weights(log_weights.unsqueeze(-1), log_q.unsqueeze(-1))  # one step: [K, B, 1]
        return LatentOutput(trajectory, baseline=baseline, losses=losses, metrics=metrics)


class ToyTask:
    Config = ToyConfig

    def __init__(self, config, train_config, *, device, rank=0, world_size=1):
        self.config, self.train_config = config, train_config
        self.rank, self.world_size = rank, world_size
        generator = torch.Generator().manual_seed(99)
        self.x = torch.randn(config.num_examples, config.dim, generator=generator)

    def build_model(self):
        return ToyModel(self.config, with_baseline=self.train_config.estimator == "nvil")

    def train_batches(self, epoch):
        tc = self.train_config
        per_rank = tc.batch_size // self.world_size
        for number, index in enumerate(
            shard_batches(len(self.x), tc.batch_size, seed=tc.seed, epoch=epoch, rank=self.rank, world_size=self.world_size)
        ):
            generator = torch.Generator().manual_seed(tc.seed * 100_003 + epoch * 1009 + number)
            uniforms = torch.rand(tc.num_samples, tc.batch_size, self.config.latents, generator=generator)
            yield {"x": self.x[index], "u": uniforms[:, self.rank * per_rank : (self.rank + 1) * per_rank]}

    @torch.no_grad()
    def evaluate(self, model, split):
        # draws from the global RNG on purpose: the trainer must shield training from it
        z = (torch.rand(len(self.x), self.config.latents) < torch.sigmoid(model.encoder(self.x))).float()
        return {"mse": float(((self.x - model.decoder(z)) ** 2).mean())}


def distributed_worker(rank: int, world_size: int, port: int, configs: list) -> None:
    """Entry point of a spawned rank: join a gloo group and train each config in turn."""
    import os

    import torch.distributed as dist

    from hardalign.train import TASKS, resolve_config, train

    torch.set_num_threads(1)
    TASKS["toy"] = "toytask:ToyTask"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for values in configs:
            train(resolve_config(values))
        # both ranks finish their last collective before either tears the group down: one CI run
        # saw a rank abort in gloo's teardown ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()
