"""Developer tools that run from a source checkout (``python -m tools.NAME``).

Not part of the streamcheck distribution: ``pyproject.toml`` packages ``streamcheck*`` only, and
library code never imports from here.
"""
