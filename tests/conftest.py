import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Triton kernels run on CPU tensors in Triton's interpreter (tests/model/test_kernels.py); it is
# read when a kernel is defined, so before anything imports moescale.model.triton_kernels.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
