"""Triton model ``attributes``: garment crops -> attribute probabilities, ONNX Runtime or PyTorch.

CROPS UINT8 [C, C, 3], TOKEN UINT8 [32] -> ATTRIBUTE_PROBS FP32 [A] (softmax per attribute
group, concatenated in label-map order), and CROP_MASKS FP32 [m, m] (the garment's mask
probability over the crop) when the network has a mask head (its runner's ``mask_size``),
CROP_EMBEDDINGS FP32 [D] and VERTICAL_PROBS FP32 [V] when it has an embedding or vertical head:
each optional output is served where the config declares it and the network has it.
Called by ``postprocess`` through BLS only: a request
without the token ``postprocess`` sends is refused alone (:mod:`fashionbox.core.capability`); the
whole dynamic batch of crops runs as one call of its runtime (ONNX Runtime on the CPU, or PyTorch
on the instance's device). Parameters:
:class:`fashionbox.core.serving.AttributesParameters`, :class:`fashionbox.core.serving.RuntimeSettings` and
:class:`fashionbox.core.serving.OrtSettings`.
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
    AttributesParameters,
    InputSpec,
    ModelArgs,
    RequestError,
    read_input,
    run_concatenated,
)
from fashionbox.model_repository.runners import ATTRIBUTE_EXTRAS, load_attributes_runner  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.args = ModelArgs.from_backend_args(args)
        params = AttributesParameters.from_parameters(self.args.parameters)
        self.heads, loaded = load_attributes_runner(self.args)
        self.crops = InputSpec(contract.CROPS.name, np.uint8, (params.crop_size, params.crop_size, 3))
        self.key = PipelineKey.for_step(None)
        if not self.key.enforced:
            pb_utils.Logger.log_warn(f"{self.args.name}: {self.key.warning}")
        # Optional heads' outputs go out only where the config declares them (the converter adds
        # each one the graph has), so a config and its model never disagree on the outputs; a runner
        # written before the optional heads existed has none.
        declared = {output["name"] for output in self.args.config.get("output", [])}
        have = tuple(getattr(self.heads, "outputs", ()))
        self.extras = {graph: served for graph, served in ATTRIBUTE_EXTRAS.items()
                       if graph in have and served in declared}
        pb_utils.Logger.log_info(f"{self.args.name}: {loaded}; optional outputs {sorted(self.extras.values())}")

    def execute(self, requests):
        if self.extras:
            return run_concatenated(
                requests, self.crops, compute=self._run_all, split=self._split_all, model=self.args.name,
                check=self._check,
            )
        return run_concatenated(
            requests, self.crops, compute=self.heads.classify, split=self._split, model=self.args.name,
            check=self._check,
        )

    def _run_all(self, crops):
        return self.heads.run(crops, tuple(self.extras))

    def _split_all(self, outputs, part):
        served = {contract.ATTRIBUTE_PROBS.name: outputs[contract.ONNX_ATTRIBUTES_OUTPUT][part]}
        for graph, name in self.extras.items():
            served[name] = outputs[graph][part]
        return served

    def _check(self, request, crops):
        tokens = read_input(request, TOKEN_INPUT)
        if tokens.shape[0] != crops.shape[0]:
            raise RequestError(f"{contract.TOKEN.name} has {tokens.shape[0]} rows for {crops.shape[0]} crops")
        self.key.check_attributes(tokens, model=self.args.name)

    @staticmethod
    def _split(probs, part):
        return {contract.ATTRIBUTE_PROBS.name: probs[part]}


    def finalize(self):
        self.heads = None
