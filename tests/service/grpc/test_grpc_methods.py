"""Every method of every gRPC service the server registers (rewardserve.v1, KServe v2,
health), enumerated from the service descriptors, so a method added without a case here
fails: each is called through a grpc.aio channel to the real server on a loopback port with
API keys on, and must answer a valid request (UNIMPLEMENTED for the KServe methods
rewardserve does not implement), refuse a call without a key (UNAUTHENTICATED) unless it is
deliberately open, refuse an api key on loading and unloading models (PERMISSION_DENIED),
refuse a key entry sent twice (INVALID_ARGUMENT naming it), and land in the latency metric
under its method and status. Health's Watch streams every status change: NOT_SERVING while
loading, SERVING once loaded, NOT_SERVING when the server stops."""

from __future__ import annotations

import asyncio
import threading
from contextlib import ExitStack

import grpc
import pytest
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from http_helpers import free_port, live_server
from metrics_helpers import wait_for_sample
from tritonclient.grpc import service_pb2

from service.app import create_app
from service.config import ModelConfig, Settings
from service.engine.registry import ModelRegistry
from service.grpc.interceptor import ADMIN_METHODS, OPEN_METHODS
from service.grpc.proto import rewardserve_pb2 as pb

SCALAR, PRM = "llama-scalar", "qwen2-prm"
API_KEY, ADMIN_KEY = "k-grpc-methods", "k-grpc-admin"
WAIT_S = 30
SERVICES = [pb.DESCRIPTOR.services_by_name["RewardService"],
            service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
            health_pb2.DESCRIPTOR.services_by_name["Health"]]
METHODS = {f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}
WATCH = "/grpc.health.v1.Health/Watch"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

PAIR = pb.Item(text=pb.TextItem(prompt="What is 2 + 2?", response="It is 4."))
STEPS = pb.Item(steps=pb.StepsItem(prompt="What is 3 + 4?", steps=["3 + 4 = 7", "The answer is 7."]))
TEXTS = [pb.Candidate(text="It is 4."), pb.Candidate(text="It is 5.")]


def infer_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=SCALAR, id="r1")
    for name, value in (("prompt", b"What is 2 + 2?"), ("response", b"It is 4.")):
        request.inputs.add(name=name, datatype="BYTES", shape=[1]).contents.bytes_contents.append(value)
    return request


def kserve(name: str) -> str:
    return f"/inference.GRPCInferenceService/{name}"


def reward(name: str) -> str:
    return f"/rewardserve.v1.RewardService/{name}"


# method -> (its request, or requests on a client stream; what its responses must satisfy)
CASES = {
    reward("Score"): (pb.ScoreRequest(model=SCALAR, items=[PAIR, PAIR]),
                      lambda r: [x.index for x in r[0].results] == [0, 1] and r[0].results[0].num_tokens > 0),
    reward("ScoreStream"): ([pb.ScoreRequest(model=SCALAR, items=[PAIR], request_id=i) for i in ("a", "b")],
                            lambda r: sorted(x.request_id for x in r) == ["a", "b"]
                            and all(x.WhichOneof("outcome") == "response" for x in r)),
    reward("ListModels"): (pb.ListModelsRequest(), lambda r: {m.name for m in r[0].models} == {SCALAR, PRM}),
    reward("Compare"): (pb.CompareRequest(model=SCALAR, prompt="What is 2 + 2?", responses=TEXTS),
                        lambda r: len(r[0].results) == 2),
    reward("Rerank"): (pb.RerankRequest(model=SCALAR, query="What is 2 + 2?", documents=TEXTS),
                       lambda r: sorted(x.index for x in r[0].results) == [0, 1]),
    reward("Steps"): (pb.StepsRequest(model=PRM, items=[STEPS]), lambda r: len(r[0].results[0].step_rewards) == 2),
    kserve("ServerLive"): (service_pb2.ServerLiveRequest(), lambda r: r[0].live),
    kserve("ServerReady"): (service_pb2.ServerReadyRequest(), lambda r: r[0].ready),
    kserve("ModelReady"): (service_pb2.ModelReadyRequest(name=SCALAR), lambda r: r[0].ready),
    kserve("ServerMetadata"): (service_pb2.ServerMetadataRequest(), lambda r: r[0].name and r[0].version),
    kserve("ModelMetadata"): (service_pb2.ModelMetadataRequest(name=SCALAR),
                              lambda r: r[0].name == SCALAR and {t.name for t in r[0].inputs} >= {"prompt"}),
    kserve("ModelConfig"): (service_pb2.ModelConfigRequest(name=SCALAR), lambda r: r[0].config.name == SCALAR),
    kserve("RepositoryIndex"): (service_pb2.RepositoryIndexRequest(),
                                lambda r: {m.name for m in r[0].models} >= {SCALAR, PRM}),
    kserve("RepositoryModelLoad"): (service_pb2.RepositoryModelLoadRequest(model_name=SCALAR), lambda r: len(r) == 1),
    kserve("RepositoryModelUnload"): (service_pb2.RepositoryModelUnloadRequest(model_name=PRM),  # after the others
                                      lambda r: len(r) == 1),
    kserve("ModelInfer"): (infer_request(), lambda r: "score" in [o.name for o in r[0].outputs]),
    kserve("ModelStreamInfer"): ([infer_request(), infer_request()],
                                 lambda r: len(r) == 2 and not any(x.error_message for x in r)),
    "/grpc.health.v1.Health/Check": (health_pb2.HealthCheckRequest(), lambda r: r[0].status == SERVING),
    WATCH: (health_pb2.HealthCheckRequest(), lambda r: r[0].status == SERVING),  # then cancelled
}
UNIMPLEMENTED = {kserve(name) for name in (
    "ModelStatistics", "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings")}


def request_for(path: str):
    if path in UNIMPLEMENTED:
        request = GetMessageClass(METHODS[path].input_type)()
        return [request] if METHODS[path].client_streaming else request
    return CASES[path][0]


def stub_for(channel: grpc.aio.Channel, path: str):
    """A multi-callable for `path`, of its kind, built from its descriptor."""
    method = METHODS[path]
    kind = f"{'stream' if method.client_streaming else 'unary'}_{'stream' if method.server_streaming else 'unary'}"
    return getattr(channel, kind)(path, request_serializer=lambda message: message.SerializeToString(),
                                  response_deserializer=GetMessageClass(method.output_type).FromString)


async def call(channel: grpc.aio.Channel, path: str, metadata: tuple = ()) -> list:
    """The responses to one call of `path` with its valid request (only the first of
    Watch's, which streams until cancelled); raises the call's error."""
    pending = stub_for(channel, path)(request_for(path), metadata=metadata, timeout=WAIT_S)
    if not METHODS[path].server_streaming:
        return [await pending]
    responses = []
    async for response in pending:
        responses.append(response)
        if path == WATCH:
            pending.cancel()
            break
    return responses


async def refusal(channel: grpc.aio.Channel, path: str, metadata: tuple) -> tuple[grpc.StatusCode, str, dict]:
    """(code, details, trailing metadata) of a call of `path` that fails. On a client stream
    no request is sent: a refusal needs none, and a grpc.aio client writing while the server
    ends the call may report INTERNAL instead of the server's status (grpc/grpc#36066)."""
    if METHODS[path].client_streaming:
        pending = stub_for(channel, path)(metadata=metadata, timeout=WAIT_S)
        code, details, trailing = await pending.code(), await pending.details(), await pending.trailing_metadata()
        assert code != grpc.StatusCode.OK, path
        return code, details, dict(trailing or ())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(channel, path, metadata)
    return raised.value.code(), raised.value.details(), dict(raised.value.trailing_metadata() or ())


@pytest.fixture(scope="module")
def server(served):
    """A scalar and a process model, gRPC and API keys on; (HTTP client, gRPC target)."""
    with served([SCALAR, PRM], auth={"api_keys": [API_KEY], "admin_api_keys": [ADMIN_KEY]}, cache={"max_bytes": 0},
                timeout=WAIT_S) as server:
        yield server.http, server.grpc_target


def test_every_method_has_a_case():
    assert set(CASES) | UNIMPLEMENTED == set(METHODS)
    assert not set(CASES) & UNIMPLEMENTED


def test_every_method_through_the_interceptors(server):
    http, target = server
    api_key = (("authorization", f"Bearer {API_KEY}"),)

    async def main() -> dict[str, str]:
        """{method: the status its keyed call ended with}"""
        statuses = {}
        async with grpc.aio.insecure_channel(target) as channel:
            for path in METHODS:
                keyed = api_key
                if path in ADMIN_METHODS:
                    code, details, _ = await refusal(channel, path, api_key)
                    assert code == grpc.StatusCode.PERMISSION_DENIED and "admin" in details, (path, details)
                    keyed = (("authorization", f"Bearer {ADMIN_KEY}"),)
                if path in UNIMPLEMENTED:
                    code, details, _ = await refusal(channel, path, keyed)
                    assert code == grpc.StatusCode.UNIMPLEMENTED and "does not implement" in details, (path, details)
                    statuses[path] = "UNIMPLEMENTED"
                else:
                    responses = await call(channel, path, keyed)
                    assert CASES[path][1](responses), (path, responses)
                    statuses[path] = "CANCELLED" if path == WATCH else "OK"
                if path in OPEN_METHODS:
                    assert CASES[path][1](await call(channel, path)), path
                    continue
                code, details, trailing = await refusal(channel, path, ())
                assert (code, trailing["rewardserve-error-code"]) == (grpc.StatusCode.UNAUTHENTICATED,
                                                                      "unauthorized"), (path, details)
                for header, value in keyed[0], ("x-api-key", API_KEY):
                    code, details, trailing = await refusal(channel, path, ((header, value),) * 2)
                    assert code == grpc.StatusCode.INVALID_ARGUMENT and header in details, (path, details)
                    assert trailing["rewardserve-error-field"] == header
        return statuses

    statuses = asyncio.run(main())

    def count(scrape, path: str, status: str) -> float:
        return scrape.value("rewardserve_request_duration_seconds_count", protocol="grpc", endpoint=path,
                            status=status) or 0

    def recorded(scrape) -> bool:
        return (all(count(scrape, path, status) >= 1 for path, status in statuses.items())
                and scrape.value("rewardserve_requests_in_flight", protocol="grpc") == 0)

    scrape = wait_for_sample(http, recorded, "every gRPC call's latency", timeout=WAIT_S)
    for path in METHODS:
        if path not in OPEN_METHODS:
            assert count(scrape, path, "UNAUTHENTICATED") == 1, path
            assert count(scrape, path, "INVALID_ARGUMENT") == 2, path
    assert count(scrape, reward("Score"), "OK") == 1


def test_watch_streams_every_status_change(tiny_model_dirs, monkeypatch):
    """Loading, loaded, stopping: each watcher (overall and per service) hears each, even
    after another watcher of its service has left; a drain's NOT_SERVING is the last."""
    release = threading.Event()
    load_all = ModelRegistry.load_all

    def gated_load_all(self):
        assert release.wait(timeout=60), "the test never released loading"
        load_all(self)

    monkeypatch.setattr(ModelRegistry, "load_all", gated_load_all)
    app = create_app(Settings(models=[ModelConfig(name=SCALAR, path=str(tiny_model_dirs[SCALAR]))],
                              server={"grpc_port": free_port(), "drain_grace_s": WAIT_S},
                              auth={"api_keys": [API_KEY]}))

    async def watch(stopping: ExitStack) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            calls = [health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S)
                     for service in ("", "rewardserve.v1.RewardService", "inference.GRPCInferenceService", "")]
            assert [(await c.read()).status for c in calls] == [NOT_SERVING] * 4
            calls.pop().cancel()  # the others watching its service still hear every change
            release.set()
            assert [(await c.read()).status for c in calls] == [SERVING] * 3
            stopped = asyncio.ensure_future(asyncio.to_thread(stopping.close))
            assert [(await c.read()).status for c in calls] == [NOT_SERVING] * 3
            for c in calls:  # then the watch ends, so that it holds no drain for its grace
                assert await c.read() is grpc.aio.EOF
                assert await c.code() == grpc.StatusCode.OK
            await stopped

    try:
        with ExitStack() as stopping:
            stopping.enter_context(live_server(app))
            asyncio.run(watch(stopping))
    finally:
        release.set()
