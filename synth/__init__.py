"""serwild.synth: a synthetic corpus in IEMOCAP's on-disk layout, plus classroom noise.

Not part of the pipeline: it makes data for the demo, the tests and the benchmarks, so
everything downstream runs without the licensed corpus. ``corpus`` writes the tree,
``voice`` synthesises speech whose emotion is carried by prosody, ``noise`` the rooms.
"""
