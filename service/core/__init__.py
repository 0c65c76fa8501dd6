"""Transport-free core: errors, the Scorer and the ranking operations on the wire's requests (service.protocol)."""
