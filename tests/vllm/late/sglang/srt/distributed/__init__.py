"""An SGLang-shaped package for the import-order tests (not SGLang itself)."""
