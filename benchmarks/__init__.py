"""Benchmarks of ae-pipeline; figures are written under benchmarks/results/."""
