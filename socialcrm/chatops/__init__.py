"""Chat-ops: one command layer, with adapters for chat and the CLI."""
