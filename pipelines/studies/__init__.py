"""Compare, rank and search as Optuna studies: storage, the study's plan (StudyPlan, PrunerSpec), an arm or
trial run (ChildRun), the worker loop, a comparison's arms and racing, the search space and study, the
batch-size ceiling, and every key stored in a study.
"""
