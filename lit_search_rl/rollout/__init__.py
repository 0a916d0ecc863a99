"""The agent protocol, the multi-turn agent loop and the generation engines."""
