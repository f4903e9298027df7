"""Judging models on the held-out splits of the shared data."""
