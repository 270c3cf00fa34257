"""The servers a user would pick instead of FashionBox, around the same in-process pipeline.

Both answer one encoded image with one serialized ``fashionbox.v1.ImageDetections`` (the bytes
the ensemble's DETECTIONS output carries), so every peer does the same work per request:

- :data:`app`: FastAPI (the seeds' S0 tried an HF + FastAPI template). ``POST /detect`` with the
  image as the body; the pipeline runs in Starlette's thread pool, so ONNX Runtime (which
  releases the GIL) overlaps requests. Started by ``uvicorn peer_servers:app
  --workers N`` with ``FASHIONBOX_PEER_REPOSITORY`` naming the converted repository.
- :func:`serve_pytriton`: PyTriton binding the same pipeline as one Python model ``fashion``
  (input IMAGE, output DETECTIONS, dynamic batching), with ``instances`` copies of the callable
  (``threads`` ONNX Runtime threads each).

Used by ``bench_peers.py``; not part of FashionBox.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations at run time.
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fashionbox.core.imaging import InvalidImageError
from fashionbox.models.pipeline import InProcessPipeline

REPOSITORY_VARIABLE = "FASHIONBOX_PEER_REPOSITORY"


def make_app() -> Any:
    from fastapi import FastAPI, HTTPException, Request, Response
    from starlette.concurrency import run_in_threadpool

    pipeline = InProcessPipeline.from_repository(Path(os.environ[REPOSITORY_VARIABLE]), intra_op_threads=1)
    api = FastAPI()

    @api.post("/detect")
    async def detect(request: Request) -> Response:
        body = await request.body()
        (answer,) = await run_in_threadpool(pipeline.detections, [body])
        if isinstance(answer, InvalidImageError):
            raise HTTPException(status_code=400, detail=str(answer))
        return Response(content=answer, media_type="application/x-protobuf")

    return api


app = make_app() if REPOSITORY_VARIABLE in os.environ else None


def serve_pytriton(repository: Path, *, grpc_port: int, http_port: int, metrics_port: int, instances: int,
                   threads: int = 1, max_batch_size: int = 8) -> Any:
    """A running ``pytriton.triton.Triton`` serving the pipeline as model ``fashion`` (call ``.stop()``)."""
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    def make_callable() -> Callable[..., dict[str, np.ndarray]]:
        pipeline = InProcessPipeline.from_repository(repository, intra_op_threads=threads)

        @batch
        def infer(IMAGE: np.ndarray) -> dict[str, np.ndarray]:  # the tensor's name
            images = [bytes(row[0]) for row in IMAGE]
            answers = pipeline.detections(images)
            if any(isinstance(a, InvalidImageError) for a in answers):
                raise ValueError("; ".join(str(a) for a in answers if isinstance(a, InvalidImageError)))
            return {"DETECTIONS": np.array([[a] for a in answers], dtype=np.object_)}

        return infer

    config = TritonConfig(grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                          grpc_address="127.0.0.1", http_address="127.0.0.1")
    triton = Triton(config=config)
    triton.bind(
        model_name="fashion",
        infer_func=[make_callable() for _ in range(instances)],
        inputs=[Tensor(name="IMAGE", dtype=bytes, shape=(1,))],
        outputs=[Tensor(name="DETECTIONS", dtype=bytes, shape=(1,))],
        config=ModelConfig(max_batch_size=max_batch_size, batcher=DynamicBatcher(max_queue_delay_microseconds=500)),
        strict=False,
    )
    triton.run()
    return triton
