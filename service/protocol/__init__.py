"""The wire protocol: every type the HTTP and gRPC APIs speak (request and response bodies,
the enums and literals in them, the error body), as pydantic models over the standard
library only, so that a client imports them without the server's stack."""
