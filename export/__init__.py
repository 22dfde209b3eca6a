"""Checkpoint -> verified ONNX -> Triton model repository. Needs the `export` extra (torch)."""
