"""serwild.evaluate: checkpoints → per-condition reports, comparisons, intervals and figures.

Models out (the inference API, exports, model cards) are :mod:`serwild.deploy`.
"""
