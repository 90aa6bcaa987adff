"""Speed benchmarks: the MAE training step side by side with transformers, and the input pipeline."""
