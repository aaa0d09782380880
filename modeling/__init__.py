"""Auto-DeepLab models: search space, operations, supernet, retrain network, genotypes."""
