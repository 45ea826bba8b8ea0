"""Fuzzing: targets, the regression corpus, the seeded pass (``make test``) and ``make fuzz``.

docs/fuzzing.md says how to run it and what to do with what it finds.
"""
