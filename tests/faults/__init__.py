"""Fault injection with real processes (issue 14 §6): campaigns that SIGKILL the agent and the
attestation server, restart PostgreSQL and fill SQLite's volume, then check what must still
hold. Each campaign is a function returning a ``Report`` (runs, faults injected, violations),
used by ``tests/integration/test_faults.py`` with few rounds and by the command line with many:
``python -m tests.faults CAMPAIGN --rounds N --seed S`` (docs/robustness.md)."""
