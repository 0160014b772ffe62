"""serwild.data: the reader side of a build, shared by the trainer and the evaluator.

``manifest`` reads and checks a build's manifest.json and shards (no torch: cheap to import),
``transforms`` is the one image transform, ``loaders`` streams shards into batches.
"""
