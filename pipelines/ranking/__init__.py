"""Transferability scores of a backbone's frozen features: how well it may transfer, before training it.

Kept free of imports: the command line reads the score names for `rank --by` before anything loads."""

# the scores a ranking can order by, and the metric each is logged as: higher is better for all three
SCORES = {"logme": "score/logme", "knn": "score/knn_val_acc", "linear_probe": "score/probe_val_acc"}
