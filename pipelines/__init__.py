"""The ML of freezeframe, by stage: data → models → training → studies → reports (and inference); the
typed config, the freeze policy and the shared values at this level (docs/architecture.md).

Nothing in this package imports mlflow; results leave as plain values and through listeners.
"""
