"""Benchmarks of the audit log's pure core (``python -m bench.audit.NAME``)."""
