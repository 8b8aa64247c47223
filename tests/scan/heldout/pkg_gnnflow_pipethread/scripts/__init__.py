"""Package marker for the GNNFlow held-out case (no code; the real repo runs scripts/ as a package via `from scripts.train import ...`)."""
