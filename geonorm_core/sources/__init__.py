"""Where hidden states come from, live: the norm sites of a model (:mod:`.sites`), hooks that
stream their rows into the analysis (:mod:`.adapter`: ``analyze``, ``Analyzer``), resumable long
runs (:mod:`.checkpoint`), TransformerLens and nnsight wrappers (:mod:`.interop`) and their caches
in memory (:mod:`.caches`).  Rows on disk are the sibling room, :mod:`geonorm_core.dumps`.
"""
