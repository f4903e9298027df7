"""Common ground below every package: the error types and the bounded readers of small files."""
