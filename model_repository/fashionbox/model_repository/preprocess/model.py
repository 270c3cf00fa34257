"""Triton model ``preprocess``: encoded images -> letterboxed pixels + the mapping back.

IMAGE BYTES [1] -> PIXELS UINT8 [S, S, 3], IMAGE_INFO FP32 [5], TOKEN UINT8 [32] (the capability
token ``detector`` and ``postprocess`` check: :mod:`fashionbox.core.capability`), and with an
image-level family CLASSIFIER_VIEW / EMBEDDER_VIEW UINT8 [H, W, 3]: the same decode resized and
cropped as that family's own processor does (:class:`fashionbox.core.views.ViewRecipe`), so the image
is decoded once for every network. A request whose image does not
decode fails alone with INVALID_ARG; the rest of the batch is answered normally. Parameters:
:class:`fashionbox.core.serving.PreprocessParameters`; the decode limits among them can be overridden
at serve time by the environment (:meth:`fashionbox.core.imaging.DecodeLimits.from_env`). With
:class:`fashionbox.core.serving.AdmissionSettings` it is the ensemble's admission control: every request
of a batch is admitted or refused (UNAVAILABLE, at once) before any image is decoded; its slot stays
pending (``admission_pending_ms``) until ``detector`` confirms it.
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
from fashionbox.core.capability import PipelineKey  # noqa: E402
from fashionbox.core.gpu_imaging import DecodeSettings, select_decoder  # noqa: E402
from fashionbox.core.imaging import DecodeLimits, InvalidImageError  # noqa: E402
from fashionbox.core.serving import (  # noqa: E402
    AdmissionSettings,
    ErrorCode,
    InputSpec,
    ModelArgs,
    PreprocessParameters,
    RequestError,
    ViewParameters,
    error_response,
    read_input,
    respond_each,
)


class TritonPythonModel:
    def initialize(self, args):
        self.args = ModelArgs.from_backend_args(args)
        params = PreprocessParameters.from_parameters(self.args.parameters)
        self.input_size = params.input_size
        # FASHIONBOX_MAX_IMAGE_BYTES / FASHIONBOX_MAX_PIXELS in the server's environment override
        # the limits in config.pbtxt, so an operator can change them without a new repository.
        self.limits = DecodeLimits.from_env(os.environ, params.limits)
        self.image = InputSpec(contract.IMAGE.name, np.object_, contract.IMAGE.dims)
        self.views = {}  # output name -> ViewRecipe, in config order
        view_params = ViewParameters.optional(self.args.parameters)
        for name, recipe in ((contract.CLASSIFIER_VIEW.name, view_params.classifier_view),
                             (contract.EMBEDDER_VIEW.name, view_params.embedder_view)):
            if recipe:
                from fashionbox.core.views import ViewRecipe  # only repositories with image-level families

                self.views[name] = ViewRecipe.from_json(recipe)
        # The GPU profile decodes JPEGs with nvJPEG (decode_device auto/cuda); everything else on the CPU.
        self.decoder = select_decoder(DecodeSettings.from_parameters(self.args.parameters).decode_device,
                                      gpu_index=self.args.device_id)
        pb_utils.Logger.log_info(f"{self.args.name}: decoding images on {self.decoder.device}")
        pb_utils.Logger.log_info(f"{self.args.name}: {params}, effective {self.limits}")
        admission = AdmissionSettings.optional(self.args.parameters)
        self.slots = admission.slots(self.args) if admission else None
        self.key = PipelineKey.for_step(admission)
        if not self.key.enforced:
            pb_utils.Logger.log_warn(f"{self.args.name}: {self.key.warning}")
        if admission:
            self.refusal = RequestError(
                f"the server is at capacity ({admission.max_in_flight} requests in flight); retry later",
                ErrorCode.UNAVAILABLE)
            pb_utils.Logger.log_info(f"{self.args.name}: admission control {admission}, slots {self.slots.path}")

    def execute(self, requests):
        keyed = [(request, self.key.new_request_key()) for request in requests]  # a request's slot and token key
        if self.slots is None:
            return respond_each(keyed, self._preprocess, model=self.args.name)
        admitted = self.slots.take([key for _, key in keyed])  # the whole batch decided before anything is decoded
        answers = respond_each(keyed[:admitted], self._admitted, model=self.args.name)
        return answers + [error_response(self.refusal) for _ in requests[admitted:]]

    def _admitted(self, keyed):
        try:
            return self._preprocess(keyed)
        except BaseException:
            self.slots.release([keyed[1]])  # it ends here: postprocess will not give its slot back
            raise

    def _preprocess(self, keyed):
        request, key = keyed
        images = read_input(request, self.image).reshape(-1)
        size = self.input_size
        pixels = np.empty((len(images), size, size, 3), dtype=np.uint8)
        info = np.empty((len(images), 5), dtype=np.float32)
        views = {name: np.empty((len(images), recipe.height, recipe.width, 3), dtype=np.uint8)
                 for name, recipe in self.views.items()}
        for row, data in enumerate(images):
            try:
                if views:
                    pixels[row], box, made = self.decoder.decode_views(bytes(data), size, self.limits,
                                                                       list(self.views.values()))
                    for name, view in zip(views, made, strict=True):
                        views[name][row] = view
                else:
                    pixels[row], box = self.decoder.decode_letterbox(bytes(data), size, self.limits)
            except InvalidImageError as exc:
                where = f"image {row} of {len(images)} in this request: " if len(images) > 1 else ""
                raise RequestError(f"{where}{exc}") from exc
            info[row] = box.as_array()
        return {contract.PIXELS.name: pixels, contract.IMAGE_INFO.name: info,
                contract.TOKEN.name: self.key.sign(key, pixels), **views}

    def finalize(self):
        if self.slots is not None:
            self.slots.close()
