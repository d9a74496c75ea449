"""Benchmarks: pymsquic against the native C pair on the same libmsquic and against
the Python QUIC peers, every row measured in one run. ``python -m bench --all``."""
