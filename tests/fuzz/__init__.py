"""Coverage-guided fuzzing of every parser that reads untrusted bytes (docs/fuzzing.md).

``targets`` names one function per parser; ``python -m tests.fuzz TARGET`` runs one with
atheris; ``tests/unit/test_fuzz_targets.py`` replays every corpus and mutates it briefly.
"""
