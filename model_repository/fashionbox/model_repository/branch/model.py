"""Triton models ``classifier`` and ``embedder``: an image-level network of another family.

VIEWS UINT8 [H, W, 3] (images at the network's input size, made by ``preprocess`` as the family's
own processor resizes and crops them, or garment crops cut by ``postprocess``), TOKEN UINT8 [32]
-> LABEL_PROBS FP32 [L] (classifier: softmax or sigmoid per label) or EMBEDDINGS FP32 [D]
(embedder: L2-normalised). Normalisation is inside the ONNX graph. Called by ``postprocess``
through BLS only: a request without the token ``postprocess`` sends is refused alone
(:mod:`fashionbox.core.capability`); the whole dynamic batch runs as one call of ONNX Runtime (or
OpenVINO). The one source serves both models: its config's ``graph_output`` and output name say
which. Parameters: :class:`fashionbox.core.serving.BranchParameters`, ``OrtSettings``, ``RuntimeSettings``.
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
from fashionbox.core.capability import TOKEN_INPUT, PipelineKey  # noqa: E402
from fashionbox.core.serving import (  # noqa: E402
    BranchParameters,
    InputSpec,
    ModelArgs,
    RequestError,
    read_input,
    run_concatenated,
)
from fashionbox.model_repository.runners import load_branch_runner  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.args = ModelArgs.from_backend_args(args)
        params = BranchParameters.from_parameters(self.args.parameters)
        self.network, loaded = load_branch_runner(self.args)
        self.views = InputSpec(contract.VIEWS.name, np.uint8, (params.height, params.width, 3))
        declared = [output["name"] for output in self.args.config.get("output", [])]
        if len(declared) != 1:
            raise ValueError(f"{self.args.name}: an image-level model has one output, its config declares {declared}")
        self.output = declared[0]
        self.key = PipelineKey.for_step(None)
        if not self.key.enforced:
            pb_utils.Logger.log_warn(f"{self.args.name}: {self.key.warning}")
        pb_utils.Logger.log_info(f"{self.args.name}: {loaded} -> {self.output}")

    def execute(self, requests):
        return run_concatenated(requests, self.views, compute=self.network.run, split=self._split,
                                model=self.args.name, check=self._check)

    def _check(self, request, views):
        tokens = read_input(request, TOKEN_INPUT)
        if tokens.shape[0] != views.shape[0]:
            raise RequestError(f"{contract.TOKEN.name} has {tokens.shape[0]} rows for {views.shape[0]} images")
        self.key.check_attributes(tokens, model=self.args.name)

    def _split(self, rows, part):
        return {self.output: rows[part]}

    def finalize(self):
        self.network = None
