"""One training: its preparation and execution (trainer), the values it produces (results), the engine,
optimizer, checkpoints, metrics (stepper), the device and its memory, the frozen-feature cache, the linear
probe and data-parallel training.
"""
