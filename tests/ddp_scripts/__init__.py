"""Scripts that tests launch as subprocesses for DDP runs (gloo, 2 CPU processes)."""
