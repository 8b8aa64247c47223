"""JSON Schemas of the documents streamcheck writes (reports, runs)."""
