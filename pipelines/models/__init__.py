"""Backbones by name, their weight sources, the freeze policy applied to a network, portable export."""
