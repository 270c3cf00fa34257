from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BoundingBox(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class AttributePrediction(_message.Message):
    __slots__ = ("group", "label", "score", "fashionpedia_id")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FASHIONPEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    group: str
    label: str
    score: float
    fashionpedia_id: int
    def __init__(self, group: _Optional[str] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., fashionpedia_id: _Optional[int] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("width", "height", "counts")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("model", "dimension", "dtype", "values")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    model: str
    dimension: int
    dtype: str
    values: bytes
    def __init__(self, model: _Optional[str] = ..., dimension: _Optional[int] = ..., dtype: _Optional[str] = ..., values: _Optional[bytes] = ...) -> None: ...

class ImageLabel(_message.Message):
    __slots__ = ("label", "score", "index")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    index: int
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., index: _Optional[int] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "category", "category_index", "fashionpedia_id", "score", "attributes", "mask", "embedding")
    BOX_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_INDEX_FIELD_NUMBER: _ClassVar[int]
    FASHIONPEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    box: BoundingBox
    category: str
    category_index: int
    fashionpedia_id: int
    score: float
    attributes: _containers.RepeatedCompositeFieldContainer[AttributePrediction]
    mask: Mask
    embedding: Embedding
    def __init__(self, box: _Optional[_Union[BoundingBox, _Mapping]] = ..., category: _Optional[str] = ..., category_index: _Optional[int] = ..., fashionpedia_id: _Optional[int] = ..., score: _Optional[float] = ..., attributes: _Optional[_Iterable[_Union[AttributePrediction, _Mapping]]] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ...) -> None: ...

class ImageDetections(_message.Message):
    __slots__ = ("width", "height", "detections", "model_name", "model_version", "label_map", "labels", "labels_model", "embedding")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_MAP_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABELS_MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    model_name: str
    model_version: str
    label_map: str
    labels: _containers.RepeatedCompositeFieldContainer[ImageLabel]
    labels_model: str
    embedding: Embedding
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., label_map: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[ImageLabel, _Mapping]]] = ..., labels_model: _Optional[str] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ...) -> None: ...
