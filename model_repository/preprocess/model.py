"""Triton model ``preprocess``: encoded images -> letterboxed pixels + the mapping back.

IMAGE BYTES [1] -> PIXELS UINT8 [S, S, 3], IMAGE_INFO FP32 [5]. A request whose image does not
decode fails alone with INVALID_ARG; the rest of the batch is answered normally. Parameters:
:class:`fashionbox.serving.PreprocessParameters`.
"""

# Bootstrap: the python backend stub ignores PYTHONPATH, so make the server's site-packages visible.
import os
import site
import sys

_site_packages = os.environ.get("FASHIONBOX_SITE_PACKAGES")  # set by `fashionbox serve`; unset in containers
if _site_packages:
    _before = list(sys.path)
    site.addsitedir(_site_packages)  # processes .pth files, so editable installs resolve too
    sys.path[:0] = [p for p in sys.path if p not in _before]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from fashionbox import contract  # noqa: E402
from fashionbox.imaging import InvalidImageError, decode_image, letterbox  # noqa: E402
from fashionbox.serving import (  # noqa: E402
    InputSpec,
    ModelArgs,
    PreprocessParameters,
    RequestError,
    read_input,
    respond_each,
)


class TritonPythonModel:
    def initialize(self, args):
        self.args = ModelArgs.from_backend_args(args)
        params = PreprocessParameters.from_parameters(self.args.parameters)
        self.input_size = params.input_size
        self.limits = params.limits
        self.image = InputSpec(contract.IMAGE.name, np.object_, contract.IMAGE.dims)
        pb_utils.Logger.log_info(f"{self.args.name}: {params}")

    def execute(self, requests):
        return respond_each(requests, self._preprocess, model=self.args.name)

    def _preprocess(self, request):
        images = read_input(request, self.image).reshape(-1)
        size = self.input_size
        pixels = np.empty((len(images), size, size, 3), dtype=np.uint8)
        info = np.empty((len(images), 5), dtype=np.float32)
        for row, data in enumerate(images):
            try:
                decoded = decode_image(bytes(data), target_size=size, limits=self.limits)
            except InvalidImageError as exc:
                where = f"image {row} of {len(images)} in this request: " if len(images) > 1 else ""
                raise RequestError(f"{where}{exc}") from exc
            pixels[row], box = letterbox(decoded, size)
            info[row] = box.as_array()
        return {contract.PIXELS.name: pixels, contract.IMAGE_INFO.name: info}

    def finalize(self):
        pass
