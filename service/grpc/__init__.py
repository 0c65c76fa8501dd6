"""The gRPC transport: rewardserve.v1, KServe v2 and health on one grpc.aio server."""
