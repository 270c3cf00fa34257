"""FashionBox's server-side ground floor: what the python-backend models and the tools share.

``imaging`` (decode, EXIF orientation, letterbox), ``gpu_imaging`` (the same with nvJPEG),
``postprocessing`` (boxes back to the original pixels, crops, gathering NMS output),
``results`` (the typed ``fashionbox.v1.ImageDetections`` per image), ``serving`` (model
parameters, ONNX Runtime runners, the python backend's request and response helpers) and
``admission`` (the bound on requests inside the ensemble). It imports only the wire contract
(``fashionbox.contract``, ``fashionbox.v1``); torch only where a GPU decoder is asked for.
"""
