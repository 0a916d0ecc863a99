"""Command-line tools that share the ``lit-search-rl`` entry point with fit / validate / test."""
