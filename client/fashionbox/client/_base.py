"""The pure half of the client: build requests, parse responses. No I/O, no tritonclient calls.

``FashionClient`` and ``AsyncFashionClient`` call their transport in between; everything that
decides *what* is sent, *how* an answer is read and *when* a failed call is retried
(``_retry``) lives here, once, so the two clients cannot drift apart and all of it is tested
without a server.

What goes on the wire for each kind of image (the ensemble's IMAGE input, BYTES, one element):

- ``bytes``, ``bytearray``, ``memoryview``: sent exactly as given (JPEG, PNG or WebP); the server
  checks them, so a bad image fails with :class:`InvalidImage` naming the problem.
- ``str`` or ``os.PathLike`` (a ``str`` is always a path): the file's bytes, exactly as stored.
  EXIF stays in, and the server turns the picture upright.
- ``PIL.Image.Image``: turned upright by its EXIF orientation, then encoded per
  :class:`ImageEncoding`: JPEG quality 95 with 4:4:4 chroma by default, PNG on request or when the
  image has transparency.
- ``numpy.ndarray``: ``uint8 [height, width, 3]`` in RGB order (not OpenCV's BGR), encoded like a
  PIL image.

Boxes always come back in the pixels of the upright image, so for a file with an EXIF rotation
they match what an image viewer shows, not the raw pixel array.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError
from PIL import Image, ImageOps

from fashionbox import contract
from fashionbox.contract.labels import LabelMap, LabelMapError
from fashionbox.v1 import detections_pb2

from ._config import ClientConfig, ImageEncoding, _is_seconds
from ._exceptions import ClientClosed, ConfigError, InvalidInput, ProtocolError
from ._images import ImageInput, array_to_image
from ._retry import Attempts
from ._types import ImageDetections, ModelInfo, ModelStatistics, TensorInfo

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "LABELS_PARAMETER",
    "BaseClient",
    "InferRequest",
    "InferResultLike",
    "InputTensor",
    "encode_image",
    "parse_detections",
    "parse_label_map",
    "parse_model_info",
    "parse_statistics",
]

LABELS_PARAMETER = contract.LABELS_PARAMETER
"""Key of the ensemble config ``parameters`` entry where the converter puts the label map JSON."""

DEFAULT_MAX_IN_FLIGHT = 16
"""Requests ``detect_many`` keeps in flight unless told otherwise: enough to keep Triton's dynamic
batcher fed on a CPU server; raise it for a GPU server or a distant one."""

_PNG_COMPRESS_LEVEL = 1
"""zlib level for PNG: lossless either way; level 1 encodes several times faster than the default 6
for about 10-20 % more bytes, and callers who care about bytes choose JPEG."""


class InferResultLike(Protocol):
    """What parsing needs of an inference answer; tritonclient's ``InferResult`` is one."""

    def as_numpy(self, name: str) -> npt.NDArray[Any] | None: ...


@dataclass(frozen=True)
class InputTensor:
    """One input tensor, with its batch dimension: what tritonclient's ``InferInput`` is built from."""

    name: str
    datatype: str
    data: npt.NDArray[Any]


@dataclass(frozen=True)
class InferRequest:
    """A complete inference call as plain values; transports turn it into the wire message."""

    model_name: str
    model_version: str
    inputs: tuple[InputTensor, ...]
    outputs: tuple[str, ...]
    """Outputs to return; the server computes the others anyway but does not send them."""
    timeout_s: float


# -- images ---------------------------------------------------------------------------------------


def _has_transparency(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info


def _encode_pil(image: Image.Image, encoding: ImageEncoding) -> bytes:
    buffer = io.BytesIO()
    if encoding.format == "PNG" or _has_transparency(image):
        if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
            image = image.convert("RGBA" if _has_transparency(image) else "RGB")
        image.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    else:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        # subsampling=0 keeps full colour resolution: fine stripes and checks are what the
        # textile-pattern head looks at, and 4:2:0 smears them.
        image.save(buffer, format="JPEG", quality=encoding.jpeg_quality, subsampling=0)
    return buffer.getvalue()


def is_encoded(image: ImageInput) -> bool:
    """Whether ``image`` is sent as it is: no file to read, nothing to encode (no blocking work)."""
    return isinstance(image, bytes | bytearray | memoryview)


def encode_image(image: ImageInput, encoding: ImageEncoding) -> bytes:
    """The bytes sent as the IMAGE tensor for ``image`` (see the module docstring for each kind)."""
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    elif isinstance(image, str | os.PathLike):
        try:
            with open(image, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise InvalidInput(f"cannot read image file {os.fspath(image)!r}: {exc.strerror or exc}") from exc
    elif isinstance(image, Image.Image):
        data = _encode_pil(ImageOps.exif_transpose(image), encoding)
    elif isinstance(image, np.ndarray):
        data = _encode_pil(array_to_image(image), encoding)
    else:
        raise InvalidInput(
            f"cannot send a {type(image).__name__} as an image; give encoded bytes, a file path, "
            "a PIL image or a uint8 [height, width, 3] RGB array"
        )
    if not data:
        raise InvalidInput("the image is empty (0 bytes)")
    return data


TEXT_BATCH = contract.TEXT_EMBEDDER_MAX_BATCH
"""Texts per ``text_embedder`` request (its ``max_batch_size`` as the converter writes it)."""


def text_batches(texts: Sequence[str]) -> list[list[str]]:
    """``texts`` checked (a list of non-empty strings) and split into requests of :data:`TEXT_BATCH`."""
    if isinstance(texts, str | bytes):
        raise InvalidInput("embed_text takes a list of texts, not one string: embed_text([text])")
    items = list(texts)
    for k, text in enumerate(items):
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(f"text {k} must be a non-empty string, got {text!r}")
    return [items[k:k + TEXT_BATCH] for k in range(0, len(items), TEXT_BATCH)]


def parse_text_embeddings(result: InferResultLike, count: int) -> npt.NDArray[np.float32]:
    """``[count, D]`` float32 from ``text_embedder``'s TEXT_EMBEDDINGS."""
    name = contract.TEXT_EMBEDDINGS.name
    array = result.as_numpy(name)
    if array is None or array.ndim != 2 or array.shape[0] != count:
        shape = None if array is None else list(array.shape)
        raise ProtocolError(f"{contract.TEXT_EMBEDDER_MODEL} answered {name} of shape {shape} for {count} texts")
    return np.asarray(array, dtype=np.float32)


# -- responses ------------------------------------------------------------------------------------


def parse_detections(result: InferResultLike) -> ImageDetections:
    """The typed result of one image from the ensemble's DETECTIONS output.

    Only DETECTIONS is read: it carries everything the numeric outputs do, with names. A missing
    or malformed output raises :class:`ProtocolError`; it never turns into an empty result.
    """
    name = contract.DETECTIONS.name
    array = result.as_numpy(name)
    if array is None:
        raise ProtocolError(
            f"the response has no {name} output: the server's model is not a FashionBox ensemble "
            f"of this client's contract version"
        )
    flat = array.reshape(-1)
    if flat.size != 1:
        raise ProtocolError(f"{name} must hold one serialized ImageDetections per image, got {flat.size}")
    raw = flat[0]
    if not isinstance(raw, bytes | np.bytes_):
        raise ProtocolError(f"{name} must be BYTES, got an element of type {type(raw).__name__}")
    try:
        message: detections_pb2.ImageDetections = detections_pb2.ImageDetections.FromString(bytes(raw))
    except DecodeError as exc:
        raise ProtocolError(f"{name} is not a serialized fashionbox.v1.ImageDetections: {exc}") from exc
    return ImageDetections.from_proto(message)


def _config_message(config_response: Any) -> Any:
    """``ModelConfig`` from tritonclient's ``ModelConfigResponse`` (or a bare ``ModelConfig``)."""
    return config_response.config if hasattr(config_response, "config") else config_response


def parse_label_map(config_response: Any) -> LabelMap:
    """The label map the converter stored in the ensemble's config ``parameters``.

    The client reads names from the server, never from a copy of its own, so a model trained
    with another label map cannot be decoded with the wrong names.
    """
    config = _config_message(config_response)
    parameters = config.parameters
    if LABELS_PARAMETER not in parameters:
        raise ProtocolError(
            f"model {config.name!r} has no {LABELS_PARAMETER!r} parameter in its config: "
            "the model repository was not written by the FashionBox converter"
        )
    try:
        return LabelMap.from_dict(json.loads(parameters[LABELS_PARAMETER].string_value))
    except (json.JSONDecodeError, LabelMapError) as exc:
        raise ProtocolError(f"model {config.name!r} has an unreadable label map: {exc}") from exc


def parse_text_model(config_response: Any) -> str:
    """The name of the embedder whose space ``text_embedder``'s vectors are in (its ``embedding_model``)."""
    config = _config_message(config_response)
    if "embedding_model" not in config.parameters:
        raise ProtocolError(f"model {config.name!r} does not say which embedder it belongs to (no "
                            "'embedding_model' parameter): convert the repository again")
    return str(config.parameters["embedding_model"].string_value)


def _tensors(metadata: Any) -> tuple[TensorInfo, ...]:
    return tuple(
        TensorInfo(name=str(t.name), datatype=str(t.datatype), shape=tuple(int(d) for d in t.shape)) for t in metadata
    )


def parse_model_info(metadata_response: Any, config_response: Any) -> ModelInfo:
    """:class:`ModelInfo` from tritonclient's ``ModelMetadataResponse`` and ``ModelConfigResponse``."""
    config = _config_message(config_response)
    parameters: Mapping[str, Any] = config.parameters
    return ModelInfo(
        name=str(metadata_response.name),
        versions=tuple(str(v) for v in metadata_response.versions),
        platform=str(metadata_response.platform),
        inputs=_tensors(metadata_response.inputs),
        outputs=_tensors(metadata_response.outputs),
        max_batch_size=int(config.max_batch_size),
        parameters={key: str(value.string_value) for key, value in parameters.items() if key != LABELS_PARAMETER},
    )


def _ms(total_ns: int, count: int) -> float:
    return total_ns / count / 1e6 if count else 0.0


def parse_statistics(response: Any) -> tuple[ModelStatistics, ...]:
    """:class:`ModelStatistics` per model version from tritonclient's ``ModelStatisticsResponse``."""
    summaries = []
    for model in response.model_stats:
        stats = model.inference_stats
        successes = int(stats.success.count)
        compute_ns = int(stats.compute_input.ns) + int(stats.compute_infer.ns) + int(stats.compute_output.ns)
        executions = int(model.execution_count)
        summaries.append(
            ModelStatistics(
                model_name=str(model.name),
                model_version=str(model.version),
                request_count=successes + int(stats.fail.count),
                failure_count=int(stats.fail.count),
                inference_count=int(model.inference_count),
                execution_count=executions,
                avg_request_ms=_ms(int(stats.success.ns), successes),
                avg_queue_ms=_ms(int(stats.queue.ns), int(stats.queue.count)),
                avg_compute_ms=_ms(compute_ns, int(stats.compute_infer.count)),
                avg_batch_size=int(model.inference_count) / executions if executions else 0.0,
            )
        )
    return tuple(sorted(summaries, key=lambda s: (s.model_name, s.model_version)))


# -- the shared base of the sync and async clients ------------------------------------------------


class BaseClient:
    """State and pure steps shared by :class:`FashionClient` and its asyncio twin."""

    def __init__(self, url: str | None = None, *, config: ClientConfig | None = None) -> None:
        config = config if config is not None else ClientConfig()
        # An explicit url is the common case ("this server"), so it wins over config.url.
        if url is not None and url != config.url:
            config = replace(config, url=url)
        self._config = config
        self._closed = False
        self._label_map: LabelMap | None = None

    @property
    def config(self) -> ClientConfig:
        return self._config

    @property
    def url(self) -> str:
        return self._config.url

    @property
    def is_closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"{type(self).__name__}(url={self.url!r}, model={self._config.model_name!r}, {state})"

    def _ensure_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"this {type(self).__name__} was closed; create a new one")

    def _timeout_s(self, timeout_s: float | None) -> float:
        if timeout_s is None:
            return self._config.timeouts.request_s
        if not _is_seconds(timeout_s):
            raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        return float(timeout_s)

    def _attempts(self, timeout_s: float) -> Attempts:
        """A new call's deadline and attempt count under the configured retry policy."""
        return Attempts(self._config.retry, timeout_s)

    @staticmethod
    def _max_in_flight(max_in_flight: int) -> int:
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be an integer >= 1, got {max_in_flight!r}")
        return max_in_flight

    def _build_text_request(self, texts: Sequence[str], *, timeout_s: float | None) -> InferRequest:
        tensor = np.empty((len(texts), *contract.TEXT.dims), dtype=np.object_)
        for k, text in enumerate(texts):
            tensor.flat[k] = text.encode("utf-8")
        return InferRequest(
            model_name=contract.TEXT_EMBEDDER_MODEL,
            model_version="",
            inputs=(InputTensor(contract.TEXT.name, contract.TEXT.datatype, tensor),),
            outputs=(contract.TEXT_EMBEDDINGS.name,),
            timeout_s=self._timeout_s(timeout_s),
        )

    def _build_detect_request(self, image: ImageInput, *, timeout_s: float | None) -> InferRequest:
        data = encode_image(image, self._config.encoding)
        # One batch row holding one BYTES element: shape [1, *IMAGE.dims] = [1, 1].
        tensor = np.empty((1, *contract.IMAGE.dims), dtype=np.object_)
        tensor.flat[0] = data  # object dtype: numpy's bytes_ dtype would strip trailing NUL bytes
        return InferRequest(
            model_name=self._config.model_name,
            model_version=self._config.model_version,
            inputs=(InputTensor(contract.IMAGE.name, contract.IMAGE.datatype, tensor),),
            outputs=(contract.DETECTIONS.name,),
            timeout_s=self._timeout_s(timeout_s),
        )
