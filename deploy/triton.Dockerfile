# Production image: NGC Triton 24.10 (Triton 2.51, the same release as the embedded server)
# plus what the FashionBox python-backend models import. No torch: the converter runs elsewhere.
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
