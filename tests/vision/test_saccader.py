"""Saccader-style model: cells never revisited, union-of-boxes area, stages and frozen representation."""

import pytest
import torch

from hardalign.objective import training_terms

from hardalign.attention import HardAttention
from hardalign.estimators import build_estimator
from hardalign.vision.saccader import RECEPTIVE_FIELD, STRIDE, Saccader


def _model(**kwargs):
    options = dict(num_glimpses=4, channels=8, hidden_size=8, key_size=4)
    options.update(kwargs)
    return Saccader(**options)


def _batch(n=5, height=24, width=20):
    generator = torch.Generator().manual_seed(0)
    return {"images": torch.rand(n, 1, height, width, generator=generator), "labels": torch.randint(0, 10, (n,), generator=generator)}


def test_geometry_constants():
    assert (RECEPTIVE_FIELD, STRIDE) == (21, 4)
    model = _model()
    assert (model.receptive_field, model.stride) == (21, 4)
    assert model.grid_shape(60, 60) == (15, 15)
    assert model.grid_shape(100, 100) == (25, 25)


@pytest.mark.parametrize("depth, field", [(6, 29), (7, 37)])
def test_deeper_representation_widens_the_cells_receptive_field(depth, field):
    model = _model(depth=depth)
    assert (model.receptive_field, model.stride) == (field, 4) and model.grid_shape(60, 60) == (15, 15)
    # the field is what the cell sees: a pixel change outside it leaves the cell's logits alone
    images = torch.rand(1, 1, 60, 60, requires_grad=True)
    _, logits = model.features(images)
    logits[0, :, 7, 7].sum().backward()  # cell (7, 7) is centred on pixel (28, 28)
    seen = images.grad[0, 0].abs() > 0
    rows, cols = seen.any(1).nonzero().squeeze(1), seen.any(0).nonzero().squeeze(1)
    half = field // 2
    assert rows.min() >= 28 - half and rows.max() <= 28 + half and cols.min() >= 28 - half and cols.max() <= 28 + half
    assert rows.max() - rows.min() + 1 > field - 4  # and it does reach (almost) that far
    with pytest.raises(ValueError, match="depth"):
        _model(depth=4)


def test_masking_never_revisits_a_cell():
    # as many glimpses as cells: every rollout must be a permutation of the cells
    batch = _batch(n=7, height=12, width=16)
    rows, cols = _model().grid_shape(12, 16)
    model = _model(num_glimpses=rows * cols)
    assert isinstance(model, HardAttention)
    memory = model.encode(batch)
    for _ in range(3):
        traj = model.run(memory, num_samples=4)
        cells = traj.locations.sort(dim=-1).values  # [K, B, T]
        assert torch.equal(cells, torch.arange(rows * cols).expand_as(cells))
        assert torch.isfinite(traj.log_q).all()
    # and the log-probability of an already visited cell is -inf
    memory["num_steps"] = model.num_glimpses
    state = model.initial_state(memory)
    cell = torch.full((7,), 3)
    state = model.step(state, memory, cell, model.read(memory, cell))
    assert torch.isneginf(model.policy(state, memory).log_prob(cell)).all()


def test_prediction_is_the_mean_of_the_chosen_cells_logits():
    model = _model(num_glimpses=3)
    batch = _batch()
    memory = model.encode(batch)
    traj = model.run(memory, num_samples=2)
    cells = traj.locations  # [K, B, T]
    table = memory["cell_logits"]  # [B, cells, classes]
    expected = torch.stack([table[torch.arange(5), cells[k, :, t]] for k in range(2) for t in range(3)]).reshape(2, 3, 5, 10).mean(1)
    torch.testing.assert_close(traj.final_state["logits"].reshape(2, 5, 10), expected)
    assert traj.log_weights[..., :-1].abs().max() == 0


def test_attended_fraction_is_the_area_of_the_union():
    height = width = 60
    cells = torch.tensor([[0, 0, 0], [0, 1, 112], [112, 112, 112]])  # a corner cell; overlapping; the centre
    got = _model().attended_fraction(cells, height, width)
    half = RECEPTIVE_FIELD // 2
    mask = torch.zeros(3, height, width, dtype=torch.bool)
    for b in range(3):
        for cell in cells[b].tolist():
            row, col = divmod(cell, 15)
            mask[b, max(row * STRIDE - half, 0) : row * STRIDE + half + 1, max(col * STRIDE - half, 0) : col * STRIDE + half + 1] = True
    torch.testing.assert_close(got, mask.flatten(1).float().mean(-1))
    assert got[0] == (half + 1) ** 2 / 3600  # the corner cell's box is clipped to the image
    assert got[2] == 21 * 21 / 3600  # three times the same box counts once


def test_stages_and_frozen_representation():
    model = _model(representation_steps=2, pretrain_steps=2)
    batch = _batch()
    estimator = build_estimator("reinforce", baseline="ema")
    representation = list(model.representation.parameters()) + list(model.cell_classifier.parameters())
    policy = list(model.attention.parameters()) + list(model.keys.parameters()) + list(model.query.parameters())
    for step, stage in ((0, 1), (2, 2), (4, 3)):
        model.zero_grad(set_to_none=True)
        out = training_terms(model(batch, num_samples=1, step=step), estimator)
        assert out["stage"].item() == stage
        out["loss"].backward()
        trained = [p.grad is not None and p.grad.abs().max() > 0 for p in representation]
        assert all(trained) if stage == 1 else not any(trained)
        assert all(p.grad is not None for p in policy) == (stage > 1)


def test_pretraining_targets_the_best_cells_of_the_predicted_class():
    model = _model()
    memory = model.encode(_batch())
    ranked = model.ranked_cells(memory)
    predicted = memory["cell_logits"].mean(1).argmax(-1)
    scores = memory["cell_logits"][torch.arange(5), :, predicted]  # [B, cells]
    assert torch.equal(scores.gather(1, ranked[:, :1]).squeeze(1), scores.max(1).values)
    # pretraining lowers its own loss on a fixed batch
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    batch = _batch()
    for _ in range(50):
        out = model.pretrain_loss(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.9 * losses[0]


def test_representation_losses():
    batch = _batch()
    for kind in ("cells", "mean"):
        model = _model(representation_steps=1, representation_loss=kind, label_smoothing=0.0)
        out = training_terms(model(batch, num_samples=1, step=0), build_estimator("reinforce"))
        memory = model.encode(batch, frozen=False)
        cells = memory["cell_logits"]
        if kind == "mean":
            expected = torch.nn.functional.cross_entropy(cells.mean(1), batch["labels"])
        else:
            expected = torch.nn.functional.cross_entropy(cells.flatten(0, 1), batch["labels"].repeat_interleave(cells.shape[1]))
        torch.testing.assert_close(out["loss"], expected)
    with pytest.raises(ValueError, match="representation_loss"):
        _model(representation_loss="max")


def test_too_many_glimpses_is_an_error():
    with pytest.raises(ValueError, match="cells"):
        _model(num_glimpses=200).encode(_batch(height=12, width=12))
