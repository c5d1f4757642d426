"""featvis plugin: ONNX models through ONNX Runtime (in progress: registers no backend yet)."""
