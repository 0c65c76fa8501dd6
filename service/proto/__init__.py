"""The gRPC API's protocol buffers. The Python modules are generated from the .proto files
here (see `build.py`), on first import if they are missing or out of date."""

from service.proto.build import ensure_generated

ensure_generated()
