"""Data: the synthetic world, dataset loaders and (later) the recycling DataModule."""
