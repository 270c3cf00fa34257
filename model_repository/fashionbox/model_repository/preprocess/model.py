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

import triton_python_backend_utils as pb_utils  # noqa: E402

from fashionbox import contract  # noqa: E402
from fashionbox.core.serving import ModelArgs, error_response, respond_each  # noqa: E402
from fashionbox.model_repository.decoding import Entry, ImageDecoding  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.args = ModelArgs.from_backend_args(args)
        self.decoding = ImageDecoding(self.args, pb_utils.Logger.log_info)
        self.entry = Entry(self.args, pb_utils.Logger.log_info, pb_utils.Logger.log_warn)

    def execute(self, requests):
        admitted = self.entry.admit(requests)
        answers = respond_each(admitted, self._preprocess, model=self.args.name)
        return answers + [error_response(self.entry.refusal) for _ in requests[len(admitted):]]

    def _preprocess(self, keyed):
        request, key = keyed
        try:
            outputs = self.decoding.decode(request)
        except BaseException:
            self.entry.release([key])  # it ends here: postprocess will not give its slot back
            raise
        return {**outputs, **self.entry.sign(key, outputs[contract.PIXELS.name])}

    def finalize(self):
        self.entry.close()
