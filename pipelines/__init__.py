"""The ML of freezeframe, by stage, each importing only the stages below it (import-linter keeps the order,
docs/architecture.md): studies and inference → training → reports → models and ranking → data → the
typed config, the freeze policy and the shared values at this level.

Nothing in this package imports mlflow; results leave as plain values and through listeners.
"""
