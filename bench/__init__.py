"""Benchmarks: one module per figure, run by `jobgate bench` (bench/run.py), results in bench/results/."""
