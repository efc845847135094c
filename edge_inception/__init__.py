"""edge-inception: GoogLeNet from a PyTorch checkpoint to a validated, benchmarked edge inference engine.

Heavy libraries (torch, onnx, onnxruntime, TensorRT) are imported inside the functions that need them, so
``import edge_inception`` stays light.
"""

__version__ = "0.1.0"
