"""Recorded test data: evidence from a real swtpm (``evidence/``, made by ``record_evidence``)."""
