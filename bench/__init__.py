"""The benchmark harness: `uv run python -m bench` (see README.md here)."""
