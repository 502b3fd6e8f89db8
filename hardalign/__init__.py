"""hardalign: hard alignment and hard attention models trained with variational inference.

The discrete-latent core lives in :mod:`hardalign.estimators` (REINFORCE, NVIL, VIMCO and the
sequential VIMCO baseline), batched K-particle sampling in :mod:`hardalign.sampling`, and the
hard-attention protocol shared by the speech and glimpse models in :mod:`hardalign.attention`.
"""

__version__ = "0.1.0"
