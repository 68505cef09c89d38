"""The ML of freezeframe: data, backbones, freeze policies and the training engine.

Nothing in this package imports mlflow; results leave as plain dicts through listeners.
"""
