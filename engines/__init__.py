"""Networks and their execution: model definitions, training, ONNX export, backends and the engine cache."""
