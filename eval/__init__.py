"""Metrics (pure functions, no task imports) and the table builder."""
