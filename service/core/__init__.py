"""Transport-free core: request and response schemas, errors, the Scorer and the ranking operations."""
