"""serwild: speech emotion recognition that holds up in noisy rooms.

Stages, one sub-package each: ``serwild.builder`` (corpus → WebDataset shards, Ray),
``serwild.trainer`` (torchrun DDP fine-tuning of AlexNet), ``serwild.evaluate`` (per-SNR
scores, reports, predict, demo).
"""

__version__ = "0.1.0"
