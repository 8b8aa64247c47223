"""The audit core: records, stream provenance, rules, modes and the auditor.

Nothing in this package imports torch, vLLM, rich or pytest. Wrappers and runtimes turn
framework objects into the plain records defined here; front ends render what it returns.
"""
