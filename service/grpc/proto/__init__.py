"""The gRPC API's protocol buffers. The Python modules are generated from the .proto files
here (see `_compile.py`), on first import if they are missing or out of date."""

from service.grpc.proto._compile import ensure_generated

ensure_generated()
