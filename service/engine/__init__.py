"""The served models: registry, runners, the dynamic-batching scheduler and the result cache."""
