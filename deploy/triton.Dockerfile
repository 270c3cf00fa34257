# Production image: NGC Triton 24.10 (Triton 2.51, the same release as the embedded server)
# plus what the FashionBox python-backend models import. No torch unless asked for (below): the
# converter runs elsewhere.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

COPY constraints.txt /opt/fashionbox/
COPY client /opt/fashionbox/client
COPY core /opt/fashionbox/core
COPY models /opt/fashionbox/models
COPY synth /opt/fashionbox/synth
COPY training /opt/fashionbox/training
COPY converter /opt/fashionbox/converter
COPY model_repository /opt/fashionbox/model_repository
COPY server /opt/fashionbox/server
COPY loadtest /opt/fashionbox/loadtest
COPY catalog /opt/fashionbox/catalog
COPY commands /opt/fashionbox/commands

# Every part's code (one distribution per folder, docs/ARCHITECTURE.md), and only the third-party
# packages that serving, `fashionbox loadtest` and the python-backend models import: no torch
# (the converter and the networks' torch code are imported only by the commands that need them).
# numpy < 2 is pinned by the constraints: numpy 2 empties python-backend outputs (docs/FIELD_NOTES.md).
# GPU JPEG decoding in preprocess needs torch and torchvision for this image's CUDA as well; without
# them it decodes on the CPU (and logs so). The catalog's code is there for the `fashionbox` command's
# parser; its database and web dependencies are not (run the catalog beside the server, not in it).
# OpenVINO serves repositories converted with `--runtime openvino` (Triton's own openvino backend in
# this image could serve the same ONNX files natively; FashionBox uses its python-backend runner).
RUN cd /opt/fashionbox && python3 -m pip install --no-cache-dir --no-deps \
      ./client ./core ./models ./synth ./training ./converter ./model_repository ./server ./loadtest ./catalog \
      ./commands && \
    python3 -m pip install --no-cache-dir -c constraints.txt \
      numpy pillow protobuf "tritonclient[grpc]" onnxruntime openvino hdrhistogram
# `fashionbox serve` runs this image's Triton (binary, libraries, backends) instead of the wheel's.
ENV FASHIONBOX_TRITON_HOME=/opt/tritonserver

# The torch runtime (`fashionbox convert --target gpu --runtime torch`) needs torch built for this
# image's CUDA (12.6 in 24.10) inside the image: pass the PyTorch wheel index for it, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 ...
# Left empty, the image serves the TensorRT and CPU profiles only.
ARG TORCH_INDEX_URL=""
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      python3 -m pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==2.13.0" && \
      python3 -m pip install --no-cache-dir -c /opt/fashionbox/constraints.txt safetensors; \
    fi
