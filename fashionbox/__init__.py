"""FashionBox: fashion object detection served over gRPC by NVIDIA Triton Inference Server.

The distribution has one import namespace. Its parts live in top-level folders of the
source tree and are mapped into this namespace by ``pyproject.toml``:

``fashionbox.client``            typed gRPC client (sync and asyncio), no torch
``fashionbox.converter``         PyTorch -> ONNX -> TensorRT -> Triton model repository
``fashionbox.loadtest``          load-test and tuning harness
``fashionbox.models``            network definitions and shipped weights
``fashionbox.synth``             procedural fashion scene generator
``fashionbox.training``          training loops
``fashionbox.v1``                generated typed result schema (``proto/``)
``fashionbox.model_repository``  sources of the Triton python-backend models

Modules directly in this package (labels, imaging, postprocessing, the embedded server)
are shared by the server models, the reference pipeline and training, so each fact is
defined once.
"""

__version__ = "0.1.0"
