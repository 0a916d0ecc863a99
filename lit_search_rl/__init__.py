"""Train LLM search agents with GRPO and query recycling."""
