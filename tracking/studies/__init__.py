"""A study in MLflow: the parent run with its children, and the comparison's and search's reports on it."""
