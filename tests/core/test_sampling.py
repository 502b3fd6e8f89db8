"""K-particle folding and generator-driven sampling."""

import pytest
import torch
from torch import distributions as D

from hardalign.sampling import fold, fold_tree, sample, unfold


def test_fold_unfold_round_trip_and_order():
    x = torch.arange(6.0).reshape(3, 2)  # B=3
    folded = fold(x, 4)
    assert folded.shape == (12, 2)
    torch.testing.assert_close(unfold(folded, 4), x.expand(4, 3, 2))
    torch.testing.assert_close(folded[3 * 2 + 1], x[1])  # row k * B + b is particle k of example b


def test_fold_tree_and_errors():
    tree = {"frames": torch.zeros(2, 5, 3), "lengths": torch.tensor([5, 4]), "name": "utt"}
    folded = fold_tree(tree, 3)
    assert folded["frames"].shape == (6, 5, 3) and folded["lengths"].tolist() == [5, 4] * 3 and folded["name"] == "utt"
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        fold(torch.zeros(2), 0)
    with pytest.raises(ValueError, match="cannot unfold a leading axis of size 5"):
        unfold(torch.zeros(5), 2)


DISTRIBUTIONS = {
    "bernoulli": lambda dt: D.Bernoulli(probs=torch.tensor([0.2, 0.7], dtype=dt)),
    "categorical": lambda dt: D.Categorical(logits=torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]], dtype=dt)),
    "one_hot": lambda dt: D.OneHotCategorical(probs=torch.tensor([0.1, 0.6, 0.3], dtype=dt)),
    "normal": lambda dt: D.Normal(torch.tensor([0.5, -1.0], dtype=dt), torch.tensor([0.2, 1.5], dtype=dt)),
    "independent_normal": lambda dt: D.Independent(D.Normal(torch.zeros(2, dtype=dt), torch.ones(2, dtype=dt)), 1),
    "exponential (icdf)": lambda dt: D.Exponential(torch.tensor([2.0], dtype=dt)),
}


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_generator_sampling_is_reproducible_and_matches_the_distribution(name, dtype):
    dist = DISTRIBUTIONS[name](dtype)
    draws = [sample(dist, torch.Generator().manual_seed(7)) for _ in range(2)]
    torch.testing.assert_close(draws[0], draws[1])
    assert draws[0].shape == dist.batch_shape + dist.event_shape
    # 20000 independent draws through the batch: the sample mean is within 5 standard errors
    n = 20000
    big = dist.expand(torch.Size([n]) + dist.batch_shape)
    values = sample(big, torch.Generator().manual_seed(1))
    if name == "categorical":
        values = torch.nn.functional.one_hot(values, 3).to(dtype)
        mean, var = dist.probs, dist.probs * (1 - dist.probs)
    elif name == "one_hot":
        mean, var = dist.probs, dist.probs * (1 - dist.probs)
    else:
        mean, var = dist.mean, dist.variance
    stderr = (var / n).sqrt()
    assert bool(((values.mean(0) - mean).abs() <= 5 * stderr + 1e-9).all()), (values.mean(0), mean)
    if values.is_floating_point():
        assert values.dtype == dtype


def test_sample_without_a_generator_and_unsupported_distribution():
    dist = D.Bernoulli(probs=torch.full((3,), 0.5))
    assert sample(dist).shape == (3,)
    weird = D.Dirichlet(torch.ones(3))
    with pytest.raises(TypeError, match="cannot draw from Dirichlet with an explicit generator"):
        sample(weird, torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampling_on_cuda_makes_no_host_sync():
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for dist in (
            D.Bernoulli(logits=torch.zeros(64, device=device)),
            D.Categorical(logits=torch.zeros(64, 9, device=device)),
            D.Normal(torch.zeros(64, 2, device=device), 0.1),
        ):
            out = sample(dist, g)
            assert out.device.type == "cuda"
    finally:
        torch.cuda.set_sync_debug_mode("default")
