"""Inference: classify image files with a trained network, preprocessed as in training."""
