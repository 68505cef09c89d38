"""Transferability scores of a backbone's frozen features: how well it may transfer, before training it."""
