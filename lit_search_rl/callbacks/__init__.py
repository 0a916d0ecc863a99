"""Lightning callbacks: recycling statistics and plots (and, later, weight sync, retriever lifecycle, evaluation)."""
