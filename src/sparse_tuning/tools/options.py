"""Names the tools take, torch-free, for the command line to offer without loading them."""

EXPORT_FORMATS = ("onnx", "torchscript", "export", "safetensors", "pretrained", "peft")
