"""Export of bundles for runtimes without PyTorch (ONNX)."""
