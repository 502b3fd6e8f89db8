"""The CTC label-start posteriors against brute-force enumeration of every CTC path."""

import itertools

import torch

from hardalign.speech.aligner import emission_hazard, label_start_posteriors


def brute_force(log_probs, length, targets):
    C = log_probs.shape[-1]
    total, starts_mass = 0.0, torch.zeros(length, len(targets), dtype=torch.float64)
    for path in itertools.product(range(C), repeat=length):
        collapsed, starts, previous = [], [], None
        for t, c in enumerate(path):
            if c != 0 and c != previous:
                collapsed.append(c)
                starts.append(t)
            previous = c
        if collapsed == targets:
            p = torch.exp(sum(log_probs[t, c] for t, c in enumerate(path)))
            total += p
            for u, s in enumerate(starts):
                starts_mass[s, u] += p
    return starts_mass / total


def test_start_posteriors_match_enumeration_with_repeats_and_padding():
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(3, 5, 3, dtype=torch.float64), -1)
    targets = torch.tensor([[1, 1], [2, 1], [2, 0]])
    target_lengths = torch.tensor([2, 2, 1])
    lengths = torch.tensor([5, 4, 3])
    post = label_start_posteriors(log_probs, lengths, targets, target_lengths)
    for b in range(3):
        T, U = int(lengths[b]), int(target_lengths[b])
        expected = brute_force(log_probs[b], T, targets[b, :U].tolist())
        torch.testing.assert_close(post[b, :T, :U], expected, rtol=1e-9, atol=1e-9)
        assert (post[b, T:] == 0).all() and (post[b, :, U:] == 0).all()
    hazard = emission_hazard(post)
    assert ((hazard > 0) & (hazard < 1)).all()


def test_unalignable_targets_give_zero_posteriors():
    log_probs = torch.log_softmax(torch.randn(1, 2, 3), -1)
    post = label_start_posteriors(log_probs, torch.tensor([2]), torch.tensor([[1, 1]]), torch.tensor([2]))  # needs 3 steps
    assert (post == 0).all()


def test_float32_matches_float64_on_a_long_batch_and_empty_targets_work():
    torch.manual_seed(1)
    log_probs = torch.log_softmax(3 * torch.randn(4, 60, 9, dtype=torch.float64), -1)
    targets = torch.randint(1, 9, (4, 12))
    targets[0, 3:6] = 5  # repeats need the blank between them
    lengths, target_lengths = torch.tensor([60, 41, 25, 60]), torch.tensor([12, 7, 12, 0])
    exact = label_start_posteriors(log_probs, lengths, targets, target_lengths)
    single = label_start_posteriors(log_probs.float(), lengths, targets, target_lengths)
    torch.testing.assert_close(single.double(), exact, rtol=1e-4, atol=1e-5)
    valid = torch.arange(60).view(1, 60, 1) < lengths.view(4, 1, 1)
    sums = exact.sum(1)  # each label starts exactly once
    torch.testing.assert_close(sums[:3], (torch.arange(12) < target_lengths[:3, None]).double() * torch.ones(3, 12, dtype=torch.float64))
    assert (exact[~valid.expand_as(exact)] == 0).all() and (exact[3] == 0).all()
    assert label_start_posteriors(log_probs, lengths, targets[:, :0], torch.zeros(4, dtype=torch.long)).shape == (4, 60, 0)


def test_each_utterance_as_alone_whatever_the_padding():
    """The backward pass runs as the forward one on each utterance reversed within its own length
    and labels: padding (steps and labels) must not move anything."""
    torch.manual_seed(2)
    log_probs = torch.log_softmax(2 * torch.randn(3, 30, 6, dtype=torch.float64), -1)
    targets = torch.randint(1, 6, (3, 9))
    targets[1, 2:4] = 3  # a repeat
    lengths, target_lengths = torch.tensor([30, 17, 22]), torch.tensor([9, 5, 1])
    batched = label_start_posteriors(log_probs, lengths, targets, target_lengths)
    for b in range(3):
        T, U = int(lengths[b]), int(target_lengths[b])
        alone = label_start_posteriors(log_probs[b : b + 1, :T], lengths[b : b + 1], targets[b : b + 1, :U], target_lengths[b : b + 1])
        torch.testing.assert_close(batched[b, :T, :U], alone[0], rtol=1e-12, atol=1e-12)
        assert (batched[b, T:] == 0).all() and (batched[b, :, U:] == 0).all()
