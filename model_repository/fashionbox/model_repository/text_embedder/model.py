"""Triton model ``text_embedder``: texts -> vectors in an embedder family's image space.

TEXT BYTES [1] (one UTF-8 text per batch row) -> TEXT_EMBEDDINGS FP32 [D] (L2-normalised: the dot
product with an image's or a garment's ``embedding`` of the same model is their cosine similarity),
so that a catalog can search photos by words. Clients call it directly (``FashionClient.embed_text``):
it is an entry of the server, like the ensemble, so it refuses what a bad caller could send:
a text that is not UTF-8, empty, or longer than ``max_text_bytes`` fails its request alone
(INVALID_ARG) before anything is tokenized, and its queue is bounded (``max_queue_size``). The
tokenizer the converter saved runs here (:mod:`fashionbox.core.text`), the text graph in ONNX
Runtime, or in OpenVINO where the repository's networks run in it
(:func:`fashionbox.model_repository.runners.load_text_runner`). Parameters:
:class:`fashionbox.core.serving.TextEmbedderParameters`, ``OrtSettings``, ``RuntimeSettings``.
"""

# Bootstrap: the python backend stub ignores PYTHONPATH, so make the server's site-packages visible.
import os
import site
import sys

_site_packages = os.environ.get("FASHIONBOX_SITE_PACKAGES")  # set by `fashionbox serve`; unset in containers
if _site_packages:
    _before = list(sys.path)
    for _folder in _site_packages.split(os.pathsep):
        site.addsitedir(_folder)  # processes .pth files, so editable installs resolve too
    sys.path[:0] = [p for p in sys.path if p not in _before]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from fashionbox import contract  # noqa: E402
from fashionbox.core.serving import (  # noqa: E402
    InputSpec,
    ModelArgs,
    RequestError,
    TextEmbedderParameters,
    read_input,
    respond_each,
)
from fashionbox.model_repository.runners import load_text_runner  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.args = ModelArgs.from_backend_args(args)
        params = TextEmbedderParameters.from_parameters(self.args.parameters)
        self.params = params
        self.text = InputSpec(contract.TEXT.name, np.object_, contract.TEXT.dims)
        self.embedder, loaded = load_text_runner(self.args)
        pb_utils.Logger.log_info(f"{self.args.name}: {loaded}")

    def execute(self, requests):
        return respond_each(requests, self._embed, model=self.args.name)

    def _embed(self, request):
        rows = read_input(request, self.text).reshape(-1)
        texts = []
        for row, value in enumerate(rows):
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            where = f"text {row} of {len(rows)}: " if len(rows) > 1 else ""
            if len(data) > self.params.max_text_bytes:
                raise RequestError(f"{where}{len(data)} bytes, more than the {self.params.max_text_bytes} "
                                   "this server takes")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RequestError(f"{where}not UTF-8 ({exc.reason} at byte {exc.start})") from exc
            if not text.strip():
                raise RequestError(f"{where}empty: there is nothing to embed")
            texts.append(text)
        return {contract.TEXT_EMBEDDINGS.name: self.embedder.embed(texts)}

    def finalize(self):
        self.embedder = None
