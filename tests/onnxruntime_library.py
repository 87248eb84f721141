"""Print the path of ONNX Runtime's shared library from the installed onnxruntime wheel."""

import pathlib

import onnxruntime

capi = pathlib.Path(onnxruntime.__file__).parent / "capi"
print(sorted(capi.glob("libonnxruntime.so*"))[0])
