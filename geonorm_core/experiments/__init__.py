"""What geonorm does with measured models beyond the paper: the swap test (:mod:`.swap`), the exact
LayerNorm -> RMSNorm conversion (:mod:`.convert`), the geometry during training (:mod:`.monitor`),
the side-by-side benchmark (:mod:`.bench`), and a run's model and batches from plain settings
(:mod:`.workload`, what the commands share).
"""
