"""Benchmarks that print figures (never assert times): `python -m bridge.bench codec|pacing|vendors|all`."""
