"""TorchScript (.pt/.pth): recognising a traced archive (not a state_dict), loading with input shapes, torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rknn_dropbox.formats.base import Format, FormatError, ToolkitCall

_SHAPES_HINT = "add `input_size_list: [[1, 3, 224, 224]]` (one shape per input) to the sidecar"


class TorchScript(Format):
    name, display, family = "pytorch", "TorchScript", "pytorch"
    extensions = (".pt", ".pth", ".pytorch", ".torchscript")
    toolkit_ext = ".pt"
    reference_name = "torch"

    def sniff(self, head: bytes, text: str, path: Path) -> bool:
        return head[:2] == b"PK" and path.suffix.lower() in self.extensions

    def check(self, model: Path, weights: Path | None) -> Any:
        """A traced TorchScript file is a zip with code/ and constants.pkl; torch.save of a state_dict has neither."""
        import zipfile
        try:
            with zipfile.ZipFile(model) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            raise FormatError(f"{model.name} is not a TorchScript archive (not a zip file: truncated, or not "
                              "PyTorch?)", "save the model with torch.jit.trace(model, example).save('model.pt')") \
                from None
        if not any("/code/" in n or n.endswith("constants.pkl") for n in names):
            raise FormatError(f"{model.name} holds weights (a state_dict or a pickled module), not a TorchScript "
                              "model", "the toolkit needs a traced model: torch.jit.trace(model, example)"
                              ".save('model.pt')")
        return None

    def load(self, rknn: Any, spec: Any, call: ToolkitCall, model: str, prepared: Any) -> None:
        if not spec.options.input_size_list:
            raise FormatError(f"{spec.model.name} is TorchScript, which needs its input shapes", _SHAPES_HINT)
        call("loading", rknn.load_pytorch, model=model, input_size_list=spec.options.input_size_list)

    def reference(self, spec: Any, prepared: Any, inputs: list[Any]) -> list[Any]:
        return self.reference_runner(spec, prepared)(inputs)

    def reference_runner(self, spec: Any, prepared: Any) -> Callable[[list[Any]], list[Any]]:
        import torch
        m = torch.jit.load(str(spec.model), map_location="cpu").eval()

        def run(inputs: list[Any]) -> list[Any]:
            with torch.no_grad():
                out = m(*[torch.from_numpy(x) for x in inputs])
            outs = out if isinstance(out, (list, tuple)) else [out]
            return [o.detach().numpy() for o in outs]
        return run


FORMAT = TorchScript()
