"""The naive baseline: one forward pass per request, as OpenRLHF's `serve_rm` does it.

Each request's items are scored in their own order, in chunks of `--batch-size`, each
padded to its longest item, synchronously inside the async handler, so requests are
served one at a time and never batched together. `/stats` counts real and padded tokens.

    python -m loadtests.naive_server --port 8101 [--model-dir DIR] [--name NAME] [--device cuda --dtype bfloat16]

With `--device`/`--dtype` (loadtests.gpu_bench: cuda, bfloat16) the model is loaded there;
without, on CPU in float32 by loadtests.model, as every CPU benchmark runs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request

from loadtests import model as shared
from models.reward_model import RewardModel
from service.config import BUILTIN_DIR


def create_app(model_dir: Path | None, name: str, batch_size: int, device: str | None = None,
               dtype: str | None = None) -> FastAPI:
    if device is None and dtype is None:
        model = shared.load(model_dir, name)
    else:
        model = RewardModel.load(name, model_dir or BUILTIN_DIR / shared.DEFAULT_MODEL, device=device or "cpu",
                                 dtype=dtype or "float32")
    counts = {"real_tokens": 0, "padded_tokens": 0, "forwards": 0}
    app = FastAPI()

    @app.post("/v1/score")
    async def score(request: Request):
        body = await request.json()
        encoded = [model.encode(shared.to_input(item)) for item in body["items"]]
        scores = shared.score_in_order(model, encoded, batch_size)
        lengths = [e.num_tokens for e in encoded]
        chunks = [lengths[i:i + batch_size] for i in range(0, len(lengths), batch_size)]
        real, padded = shared.padding(chunks)
        counts["real_tokens"] += real
        counts["padded_tokens"] += padded
        counts["forwards"] += len(chunks)
        return {"results": [{"index": i, "score": s} for i, s in enumerate(scores)],
                "usage": {"total_tokens": real}}

    @app.get("/health")
    async def health():
        return {"status": "ready", "torch_threads": torch.get_num_threads()}

    @app.get("/stats")
    async def stats():
        return counts

    @app.post("/stats/reset")
    async def reset():
        counts.update(real_tokens=0, padded_tokens=0, forwards=0)
        return counts

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="naive one-forward-per-request reward server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--name", default=shared.DEFAULT_MODEL)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", help="'cpu', 'cuda', 'cuda:1', ... (default: cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="(default: float32)")
    args = parser.parse_args()
    app = create_app(args.model_dir, args.name, args.batch_size, args.device, args.dtype)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
