"""AMD Quark (``amd-quark`` 0.13): QDQ quantization of the streaming graphs for ONNX Runtime's Vitis AI EP."""
