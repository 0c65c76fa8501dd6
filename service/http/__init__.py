"""The HTTP transport: FastAPI routes over the core, KServe v2 and the compatibility APIs."""
