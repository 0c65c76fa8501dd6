"""The Ray Serve baseline: the same model behind one Ray Serve replica, with `@serve.batch`
gathering items across requests (in arrival order, up to `--batch-size` per forward, each
batch padded to its longest item). This is how Ray Serve's docs batch a model; the forward
runs off the replica's event loop so the next batch can fill meanwhile.

Runs in its own virtual environment (so Ray's dependencies never change the service's):

    loadtests/.venv-ray/bin/python -m loadtests.ray_server --port 8102 [--model-dir DIR]

and shuts Ray down on SIGTERM. `/stats` counts real and padded tokens.
"""

import argparse
import asyncio
import os
import signal
import threading
from pathlib import Path

import ray
from fastapi import FastAPI, Request
from ray import serve

from loadtests import model as shared

app = FastAPI()


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=4096)
@serve.ingress(app)
class RewardDeployment:
    def __init__(self, model_dir: str | None, name: str, batch_size: int, threads: int):
        self.model = shared.load(Path(model_dir) if model_dir else None, name, threads=threads)
        self._score_batch.set_max_batch_size(batch_size)
        self.threads = threads
        self.counts = {"real_tokens": 0, "padded_tokens": 0, "forwards": 0}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _score_batch(self, encoded: list) -> list[float]:
        outputs = await asyncio.to_thread(self.model.forward, encoded)
        real, padded = shared.padding([[e.num_tokens for e in encoded]])
        self.counts["real_tokens"] += real
        self.counts["padded_tokens"] += padded
        self.counts["forwards"] += 1
        return [out.score for out in outputs]

    @app.post("/v1/score")
    async def score(self, request: Request):
        body = await request.json()
        encoded = [self.model.encode(shared.to_input(item)) for item in body["items"]]
        scores = await asyncio.gather(*(self._score_batch(e) for e in encoded))
        return {"results": [{"index": i, "score": s} for i, s in enumerate(scores)],
                "usage": {"total_tokens": sum(e.num_tokens for e in encoded)}}

    @app.get("/health")
    async def health(self):
        return {"status": "ready", "torch_threads": self.threads}

    @app.get("/stats")
    async def stats(self):
        return self.counts

    @app.post("/stats/reset")
    async def reset(self):
        self.counts.update(real_tokens=0, padded_tokens=0, forwards=0)
        return self.counts


def main() -> None:
    parser = argparse.ArgumentParser(description="Ray Serve reward server with @serve.batch")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--name", default=shared.DEFAULT_MODEL)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False,
             logging_level="warning")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(RewardDeployment.bind(args.model_dir, args.name, args.batch_size, args.threads),
                  route_prefix="/", blocking=False)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
