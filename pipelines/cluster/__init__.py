"""Workers of a comparison, ranking or search started by an engine: this machine's processes, Ray tasks or
a Slurm job array. Each worker runs the launcher's own command line (`python -m freezeframe compare ...`)
with FREEZEFRAME_WORKER set, against the same storage and tracking server; freezeframe/launcher.py
submits them, follows the study and stops them."""
