"""INT8 calibration: encoder inputs gathered by replaying recordings, QDQ INT8 ONNX files for ONNX Runtime
(and TensorRT's explicit quantization), and the accuracy gate that decides whether INT8 may be the default."""
