"""freezeframe's entry points: the composition root that wires pipelines/ (the ML) to tracking/ (MLflow)."""
