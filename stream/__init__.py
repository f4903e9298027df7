"""The actstream runtime: sources -> ring buffers -> step core -> engines -> temporal state -> publish."""

__version__ = "0.1.0"
