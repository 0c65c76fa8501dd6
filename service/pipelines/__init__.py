"""Reward pipelines: verifiable rules and user functions in isolated worker processes,
combined with reward-model scores."""
