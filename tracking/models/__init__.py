"""Logged and registered models: weights/ written and read back, the registry, reregister."""
