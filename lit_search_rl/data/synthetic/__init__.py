"""The synthetic world: fictional entities, a passage corpus, multi-hop questions and expert trajectories."""
