"""Compare and search as Optuna studies: storage, the worker loop, a comparison's arms,
the search space and study, and every key stored in a study.
"""
