"""A Saccader-style hard-attention classifier (Elsayed et al. 2019) on the hard-attention protocol.

* Representation network: a small convolutional network whose cells have a *local* receptive
  field (``RECEPTIVE_FIELD`` = 21 pixels with the default 5 layers, 29 or 37 with ``depth`` 6
  or 7; stride 4, so a 60x60 image gives a 15x15 grid). Each
  cell carries features and its own class logits (a 1x1 convolution), so a prediction made from
  a few cells depends only on the pixels those cells see.
* Attention network: ``a = conv1x1(relu(conv1x1(features)))``, one "what" logit per cell.
* Saccader cell: a GRU over the chosen cells' features and positions; location logits
  ``a_c + <q(h_{t-1}), k(f_c)> / sqrt(key_size)`` over cells, visited cells set to ``-inf``, so the
  ``Categorical`` policy never revisits a cell.
* Prediction: the class logits of the chosen cell, averaged over the glimpses so far;
  ``log p(y | x, c_{1..T}) = log_softmax(mean_t logits[c_t])[y]`` scored at the last step.

Training has three stages selected by the trainer's step counter (:meth:`Saccader.forward`):

1. ``representation_steps``: the representation alone. ``representation_loss: cells`` (the
   default) averages every cell's own cross-entropy (with ``label_smoothing``), so that each cell
   is a calibrated classifier of its receptive field; ``mean`` is BagNet's cross-entropy of the
   mean of all cells' logits. With ``mean`` the cells learn huge logits, the mean of the few
   *chosen* cells' logits is so overconfident that ``log p(y | glimpses)`` averaged about -11
   nats after pretraining, and the policy gradient on that reward learned to look at empty
   corners (measured; see recipes/glimpse/README.md);
2. ``pretrain_steps`` (labels only; 0 skips it): the representation frozen, the location logits
   are trained with cross-entropy, teacher-forced, toward the cells ranked by the predicted
   class's logit (step t's target is the t-th best cell, the better ones marked visited);
3. then the estimator (``reinforce``/``nvil``/``vimco``/``vimco-seq``) with the representation
   frozen: the reward is ``log p(y | x, c^k)``, the multi-sample objective for K > 1.

The fraction of the image attended is the area of the *union* of the glimpses' boxes, the
receptive field of each chosen cell clipped to the image (:meth:`Saccader.attended_fraction`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from hardalign.objective import LatentOutput
from hardalign.vision.model import GlimpseModel, images_to_float

__all__ = ["Saccader", "RECEPTIVE_FIELD", "STRIDE"]

#: (kernel, stride) of the representation's convolutions (padding k // 2); ``depth > 5`` appends
#: stride-1 3x3 convolutions, each widening a cell's receptive field by ``2 * STRIDE`` pixels.
_LAYERS = ((3, 1), (3, 2), (3, 1), (3, 2), (3, 1))


def _layers(depth: int) -> tuple[tuple[int, int], ...]:
    return _LAYERS + ((3, 1),) * (depth - len(_LAYERS))


def _geometry(layers) -> tuple[int, int]:
    """Receptive field (pixels) and stride of a grid cell after ``layers``."""
    field, stride = 1, 1
    for kernel, step in layers:
        field += (kernel - 1) * stride
        stride *= step
    return field, stride


#: receptive field (pixels) and stride of a grid cell of the default 5-layer representation.
RECEPTIVE_FIELD, STRIDE = _geometry(_LAYERS)


class Saccader(GlimpseModel):
    """Saccader-style model.

    Args:
        in_channels: image channels (1 or 3).
        num_classes: classes.
        num_glimpses: T (at most the number of cells).
        channels: width of the representation network (``channels // 4`` .. ``channels``).
        depth: 3x3 convolutions of the representation (>= 5); each one past 5 has stride 1 and
            widens a cell's receptive field by 8 pixels (5: 21 pixels, 6: 29, 7: 37).
        hidden_size: Saccader cell state size.
        representation_steps, pretrain_steps: lengths of stages 1 and 2 (in trainer steps).
        entropy_weight: weight of an entropy bonus on the location policy in stage 3.
        key_size: size of the cell keys and the cell's query (small: the keys are copied per particle).
        representation_loss: stage 1: ``cells`` (every cell's own cross-entropy, averaged) or
            ``mean`` (cross-entropy of the mean of all cells' logits, BagNet-style).
        label_smoothing: of the stage-1 cross-entropy; keeps the cells' logits moderate.
        step_rewards, step_loss_weight: per-step log weights (``final``, ``increments``, ``sum``)
            and the auxiliary per-step loss (:mod:`hardalign.vision.model`; the prediction after
            glimpse t is the mean of the chosen cells' logits so far). The representation is
            frozen in stage 3, so the auxiliary loss has nothing to train there but the logging.

    Example:
        >>> model = Saccader(num_glimpses=2, channels=8, hidden_size=8, representation_steps=10)
        >>> batch = {"images": torch.rand(3, 1, 24, 20), "labels": torch.tensor([0, 1, 2])}
        >>> model.grid_shape(24, 20)
        (6, 5)
        >>> out = model(batch, num_samples=1, step=0)  # stage 1: a supervised loss
        >>> out["stage"].item(), model.stage(10)
        (1.0, 3)
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        num_glimpses: int = 6,
        channels: int = 64,
        depth: int = 5,
        hidden_size: int = 64,
        representation_steps: int = 0,
        pretrain_steps: int = 0,
        entropy_weight: float = 0.0,
        key_size: int = 16,
        representation_loss: str = "cells",
        label_smoothing: float = 0.1,
        step_rewards: str = "final",
        step_loss_weight: float = 0.0,
    ):
        super().__init__()
        self.set_rewards(step_rewards, step_loss_weight)
        if num_glimpses < 1:
            raise ValueError(f"Saccader: num_glimpses must be >= 1, got {num_glimpses}")
        if representation_steps < 0 or pretrain_steps < 0:
            raise ValueError("Saccader: representation_steps and pretrain_steps must be >= 0")
        if depth < len(_LAYERS):
            raise ValueError(f"Saccader: depth must be >= {len(_LAYERS)}, got {depth}")
        self.num_glimpses = num_glimpses
        self.in_channels = in_channels
        self.layers = _layers(depth)
        self.receptive_field, self.stride = _geometry(self.layers)
        self.representation_steps = representation_steps
        self.pretrain_steps = pretrain_steps
        self.entropy_weight = entropy_weight
        if representation_loss not in ("cells", "mean"):
            raise ValueError(f"Saccader: representation_loss must be 'cells' or 'mean', got {representation_loss!r}")
        self.representation_loss_kind = representation_loss
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Saccader: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        widths = (max(channels // 4, 1), max(channels // 2, 1), max(channels // 2, 1)) + (channels,) * (depth - 3)
        layers: list[nn.Module] = []
        previous = in_channels
        for (kernel, stride), width in zip(self.layers, widths):
            conv = nn.Conv2d(previous, width, kernel, stride, padding=kernel // 2)
            # He initialisation keeps the features' scale through the ReLU stack (PyTorch's default
            # shrinks it ~5x per layer, which leaves the attention network inputs near zero)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU()]
            previous = width
        self.representation = nn.Sequential(*layers)
        self.cell_classifier = nn.Conv2d(channels, num_classes, 1)  # per-cell class logits
        self.attention = nn.Sequential(nn.Conv2d(channels, hidden_size, 1), nn.ReLU(), nn.Conv2d(hidden_size, 1, 1))
        self.keys = nn.Conv2d(channels, key_size, 1)
        self.query = nn.Linear(hidden_size, key_size)
        self.cell = nn.GRUCell(channels + 2, hidden_size)
        self.baseline_net = nn.Linear(hidden_size, 1)
        self.hidden_size = hidden_size
        self.key_size = key_size

    # ----- geometry ---------------------------------------------------------------------------
    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """Grid cells ``(rows, cols)`` of an ``height x width`` image."""
        size = [height, width]
        for kernel, stride in self.layers:
            size = [(s + 2 * (kernel // 2) - kernel) // stride + 1 for s in size]
        return size[0], size[1]

    def cell_boxes(self, cells: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Receptive-field boxes ``(top, left, bottom, right)`` of flat cell indices, clipped.

        Cell ``(i, j)`` is centred on pixel ``(s * i, s * j)`` (the stride-s, padding k // 2
        convention; ``s = self.stride``) and sees ``self.receptive_field`` pixels around it.

        Args:
            cells: long ``[...]`` flat indices ``i * cols + j``.

        Returns:
            long ``[..., 4]``, bottom/right exclusive.
        """
        _, cols = self.grid_shape(height, width)
        row, col = cells // cols, cells % cols
        half, stride = self.receptive_field // 2, self.stride
        top = (row * stride - half).clamp(0, height)
        left = (col * stride - half).clamp(0, width)
        bottom = (row * stride + half + 1).clamp(0, height)
        right = (col * stride + half + 1).clamp(0, width)
        return torch.stack([top, left, bottom, right], dim=-1)

    def attended_fraction(self, cells: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Fraction of the image covered by the union of the chosen cells' boxes.

        Args:
            cells: long ``[B, T]`` chosen cells.

        Returns:
            ``[B]`` in ``[0, 1]``.
        """
        boxes = self.cell_boxes(cells, height, width)  # [B, T, 4]
        rows = torch.arange(height, device=cells.device)
        cols = torch.arange(width, device=cells.device)
        in_rows = (rows >= boxes[..., 0:1]) & (rows < boxes[..., 2:3])  # [B, T, H]
        in_cols = (cols >= boxes[..., 1:2]) & (cols < boxes[..., 3:4])  # [B, T, W]
        covered = (in_rows[..., :, None] & in_cols[..., None, :]).any(dim=1)  # [B, H, W]
        return covered.flatten(1).float().mean(-1)

    def glimpse_boxes(self, locations: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The receptive-field box of each chosen cell, ``[B, T, 1, 4]`` (the pictures' convention)."""
        return self.cell_boxes(locations.long(), height, width).unsqueeze(-2)

    # ----- representation ---------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-cell features ``[B, F, R, C]`` and class logits ``[B, classes, R, C]``."""
        features = self.representation(images)
        return features, self.cell_classifier(features)

    def encode(self, batch: dict, *, frozen: bool = True) -> dict:
        """The rollout memory: per-cell features, class logits, attention logits, positions.

        With ``frozen`` the representation runs without gradient (stages 2 and 3).
        """
        images = images_to_float(batch["images"], self.cell_classifier.weight.dtype)
        if images.shape[1] != self.in_channels:
            raise ValueError(f"Saccader was built for {self.in_channels} channel(s), got images of shape {tuple(images.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            features, cell_logits = self.features(images)
        rows, cols = features.shape[-2:]
        if self.num_glimpses > rows * cols:
            raise ValueError(f"Saccader: {self.num_glimpses} glimpses but only {rows * cols} cells")
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(-1, 1, rows, dtype=features.dtype, device=features.device),
            torch.linspace(-1, 1, cols, dtype=features.dtype, device=features.device),
            indexing="ij",
        )
        memory = {
            "features": features.flatten(2).transpose(1, 2),  # [B, cells, F]
            "cell_logits": cell_logits.flatten(2).transpose(1, 2),  # [B, cells, classes]
            "attention": self.attention(features).flatten(1),  # [B, cells]
            "keys": self.keys(features).flatten(2).transpose(1, 2),  # [B, cells, key_size]
            "positions": torch.stack([grid_x, grid_y], -1).flatten(0, 1).expand(features.shape[0], -1, -1),  # [B, cells, 2]
            "image_size": tuple(images.shape[-2:]),
        }
        if batch.get("labels") is not None:
            memory["labels"] = batch["labels"]
        return memory

    # ----- protocol ---------------------------------------------------------------------------
    def initial_state(self, memory: dict) -> dict:
        attention = memory["attention"]
        return {
            "h": attention.new_zeros(attention.shape[0], self.hidden_size),
            "visited": torch.zeros_like(attention, dtype=torch.bool),  # [N, cells]
            "logit_sum": None,
            "t": 0,
            "baselines": (),
            "logits": None,
        }

    def location_logits(self, state: dict, memory: dict) -> torch.Tensor:
        """Masked location logits ``[N, cells]`` (visited cells ``-inf``)."""
        query = self.query(state["h"])  # [N, hidden]
        # elementwise product and sum: a batched mat-vec through bmm is several times slower on CPU
        match = (memory["keys"] * query[:, None, :]).sum(-1) / math.sqrt(self.key_size)  # [N, cells]
        logits = memory["attention"] + match
        return logits.masked_fill(state["visited"], float("-inf"))

    def location_policy(self, state: dict, memory: dict) -> D.Distribution:
        return D.Categorical(logits=self.location_logits(state, memory), validate_args=False)

    def read(self, memory: dict, location: torch.Tensor) -> torch.Tensor:
        """The chosen cell's features, class logits and position, concatenated ``[N, F + classes + 2]``."""
        index = location.long()[:, None, None]  # [N, 1, 1]

        def pick(table: torch.Tensor) -> torch.Tensor:
            return table.gather(1, index.expand(-1, 1, table.shape[-1])).squeeze(1)

        return torch.cat([pick(memory["features"]), pick(memory["cell_logits"]), pick(memory["positions"])], dim=-1)

    def step(self, state: dict, memory: dict, location: torch.Tensor, glimpse: torch.Tensor) -> dict:
        num_features = memory["features"].shape[-1]
        num_classes = memory["cell_logits"].shape[-1]
        features = glimpse[:, :num_features]
        cell_logits = glimpse[:, num_features : num_features + num_classes]
        position = glimpse[:, num_features + num_classes :]
        baseline = self.baseline_net(state["h"].detach()).squeeze(-1)
        h = self.cell(torch.cat([features, position], -1), state["h"])
        visited = state["visited"].scatter(1, location.long()[:, None], True)
        logit_sum = cell_logits if state["logit_sum"] is None else state["logit_sum"] + cell_logits
        t = state["t"] + 1
        return {
            "h": h,
            "visited": visited,
            "logit_sum": logit_sum,
            "t": t,
            "baselines": state["baselines"] + (baseline,),
            "logits": logit_sum / t,  # per-glimpse predictions averaged over the glimpses so far
        }

    # ----- training stages --------------------------------------------------------------------
    def stage(self, step: int) -> int:
        """1: representation, 2: location pretraining, 3: estimator training."""
        if step < self.representation_steps:
            return 1
        if step < self.representation_steps + self.pretrain_steps:
            return 2
        return 3

    def representation_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Stage 1: per-cell cross-entropy (``cells``) or that of the mean of all cells' logits (``mean``)."""
        memory = self.encode(batch, frozen=False)
        cell_logits = memory["cell_logits"]  # [B, cells, classes]
        logits = cell_logits.mean(1)  # [B, classes]
        smoothing = self.label_smoothing
        if self.representation_loss_kind == "mean":
            loss = F.cross_entropy(logits, batch["labels"], label_smoothing=smoothing)
        else:
            labels = batch["labels"][:, None].expand(-1, cell_logits.shape[1])  # [B, cells]
            loss = F.cross_entropy(cell_logits.flatten(0, 1), labels.flatten(), label_smoothing=smoothing)
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
        return {"loss": loss, "objective": -loss.detach(), "accuracy": accuracy.detach()}

    def ranked_cells(self, memory: dict) -> torch.Tensor:
        """Cells ranked by the logit of the image-level predicted class, best first ``[B, cells]``."""
        cell_logits = memory["cell_logits"]  # [B, cells, classes]
        predicted = cell_logits.mean(1).argmax(-1)  # [B]
        score = cell_logits.gather(2, predicted[:, None, None].expand(-1, cell_logits.shape[1], 1)).squeeze(-1)
        return score.argsort(dim=1, descending=True)

    def pretrain_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Stage 2: teacher-forced cross-entropy of the location logits toward the ranked cells."""
        memory = self.encode({"images": batch["images"]}, frozen=True)
        memory["num_steps"] = self.num_glimpses
        targets = self.ranked_cells(memory)[:, : self.num_glimpses]  # [B, T]
        state = self.initial_state(memory)
        losses = []
        for t in range(self.num_glimpses):
            logits = self.location_logits(state, memory)
            losses.append(F.cross_entropy(logits, targets[:, t]))
            cell = targets[:, t]
            state = self.step(state, memory, cell, self.read(memory, cell))
        loss = torch.stack(losses).mean()
        accuracy = (state["logits"].argmax(-1) == batch["labels"]).float().mean()
        return {"loss": loss, "objective": -loss.detach(), "accuracy": accuracy.detach()}

    def forward(self, batch: dict, *, num_samples: int, step: int = 0) -> dict[str, torch.Tensor] | LatentOutput:
        """Training; the stage follows the trainer's ``step`` (logged as ``stage``): stages 1 and 2
        are supervised (a dict of loss terms), stage 3 is the policy's :class:`LatentOutput`."""
        stage = self.stage(step)
        if stage == 1:
            result = self.representation_loss(batch)
        elif stage == 2:
            result = self.pretrain_loss(batch)
        else:
            memory = self.encode(batch, frozen=True)
            output = self.latent_output(memory, num_samples=num_samples, entropy_weight=self.entropy_weight)
            output.metrics["stage"] = output.trajectory.log_q.new_tensor(float(stage))
            return output
        result["stage"] = result["loss"].new_tensor(float(stage)).detach()
        return result
