"""One MLflow run: its lifecycle (session), what it logs (run_logger), the background writer,
and runs of dead processes closed (stale).
"""
