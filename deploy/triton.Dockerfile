# Production image: NGC Triton 24.10 (Triton 2.51, the same release as the embedded server)
# plus what the FashionBox python-backend models import. No torch unless asked for (below): the
# converter runs elsewhere.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

COPY pyproject.toml constraints.txt README.md /opt/fashionbox/
COPY fashionbox /opt/fashionbox/fashionbox
COPY client /opt/fashionbox/client
COPY converter /opt/fashionbox/converter
COPY loadtest /opt/fashionbox/loadtest
COPY models /opt/fashionbox/models
COPY synth /opt/fashionbox/synth
COPY training /opt/fashionbox/training
COPY proto /opt/fashionbox/proto
COPY model_repository /opt/fashionbox/model_repository

# numpy < 2 is pinned by the constraints: numpy 2 empties python-backend outputs (FIELD_NOTES).
# [loadtest] serves the compose loadtest service. GPU JPEG decoding in preprocess needs torch and
# torchvision for this image's CUDA as well; without them it decodes on the CPU (and logs so).
RUN python3 -m pip install --no-cache-dir -c /opt/fashionbox/constraints.txt "/opt/fashionbox[runtime,loadtest]"
# `fashionbox serve` runs this image's Triton (binary, libraries, backends) instead of the wheel's.
ENV FASHIONBOX_TRITON_HOME=/opt/tritonserver

# The torch runtime (`fashionbox convert --target gpu --runtime torch`) needs torch built for this
# image's CUDA (12.6 in 24.10) inside the image: pass the PyTorch wheel index for it, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 ...
# Left empty, the image serves the TensorRT and CPU profiles only.
ARG TORCH_INDEX_URL=""
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      python3 -m pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==2.13.0" && \
      python3 -m pip install --no-cache-dir -c /opt/fashionbox/constraints.txt "/opt/fashionbox[torch-runtime]"; \
    fi
