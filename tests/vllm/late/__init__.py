"""Modules imported only after the audit started (import-order tests)."""
