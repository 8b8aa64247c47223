"""Renderers: turn run results and reports into tables, JSON and JUnit XML. They compute nothing."""
