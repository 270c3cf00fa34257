"""Typed Python client for FashionBox: fashion object detection served by NVIDIA Triton over gRPC.

Send an image, get back every garment and accessory in it, each with a box in the pixels of the
upright original image, a Fashionpedia category, a score, and attributes (sleeve length,
neckline type, textile pattern) with their probabilities. Installs without torch.

Usage::

    from fashionbox.client import FashionClient, InvalidImage

    with FashionClient("127.0.0.1:8001") as client:
        result = client.detect("look.jpg")                 # bytes, path, PIL image or RGB array
        for detection in result.above(0.5):
            print(detection.category, round(detection.score, 2), detection.box.as_list())
            print("  sleeves:", detection.attribute("sleeve length"))
            if detection.mask is not None:                 # models that segment: bool [height, width]
                print("  pixels:", int(detection.mask.sum()))

        long_sleeved = result.with_attribute("sleeve length", "wrist-length")
        print(result.to_json(indent=2))
        result.draw("look.jpg").save("look.boxes.png")

        labels = client.labels()                           # the label map, from the server
        outcomes = client.detect_many(paths, max_in_flight=32)  # a result or an error per image

    async with AsyncFashionClient("127.0.0.1:8001") as client:    # the asyncio twin, same methods
        outcomes = await client.detect_many(paths, max_in_flight=64)

Configuration comes from :class:`ClientConfig` (or ``ClientConfig.from_env()``, variables
``FASHIONBOX_*``): timeouts, :class:`RetryPolicy`, :class:`TlsConfig`, headers, message size,
compression, keepalive. Every error is a :class:`FashionBoxError`; the tree is drawn in
``fashionbox.client._exceptions``. ``client/README.md`` covers all of it, and calling the server
from other languages.
"""

from fashionbox.contract.labels import LabelMap

from ._async import AsyncFashionClient
from ._base import DEFAULT_MAX_IN_FLIGHT
from ._config import DEFAULT_URL, ClientConfig, Compression, ImageEncoding, KeepAlive, RetryPolicy, Timeouts, TlsConfig
from ._exceptions import (
    AccessDenied,
    ClientClosed,
    ConfigError,
    ConnectError,
    DeadlineExceeded,
    FashionBoxError,
    InvalidImage,
    InvalidInput,
    ModelNotReady,
    Overloaded,
    ProtocolError,
    ServerError,
    TransportError,
)
from ._sync import FashionClient
from ._transport import AsyncGrpcTransport, AsyncTransport, GrpcTransport, Transport
from ._types import (
    AttributeScore,
    BoundingBox,
    Detection,
    ImageDetections,
    ImageInput,
    ImageLabel,
    MaskRLE,
    ModelInfo,
    ModelStatistics,
    PackedEmbedding,
    TensorInfo,
)
from .draw import draw_detections

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_URL",
    "AccessDenied",
    "AsyncFashionClient",
    "AsyncGrpcTransport",
    "AsyncTransport",
    "AttributeScore",
    "BoundingBox",
    "ClientClosed",
    "ClientConfig",
    "Compression",
    "ConfigError",
    "ConnectError",
    "DeadlineExceeded",
    "Detection",
    "FashionBoxError",
    "FashionClient",
    "GrpcTransport",
    "ImageDetections",
    "ImageEncoding",
    "ImageInput",
    "ImageLabel",
    "InvalidImage",
    "InvalidInput",
    "KeepAlive",
    "LabelMap",
    "MaskRLE",
    "ModelInfo",
    "ModelNotReady",
    "ModelStatistics",
    "Overloaded",
    "PackedEmbedding",
    "ProtocolError",
    "RetryPolicy",
    "ServerError",
    "TensorInfo",
    "Timeouts",
    "TlsConfig",
    "Transport",
    "TransportError",
    "draw_detections",
]
