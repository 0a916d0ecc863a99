"""Model helpers: the tiny offline model of the embedded default."""
