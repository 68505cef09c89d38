"""One run: its preparation and execution, the engine, optimizer, checkpoints, metrics, memory,
runtime, frozen-feature cache and batch-size ceiling.
"""
