"""Helpers for users (DESIGN.md: dataset and weight download, sample data, benchmarks, the paper's runs).

Modules run as ``python -m scripts.<name>`` from the repository root (get_data, get_weights, paper, gpu_check);
the older ones as ``python scripts/<name>.py``.
"""
