"""Run drivers built on the training loop: hyper-parameter search (tune)."""
