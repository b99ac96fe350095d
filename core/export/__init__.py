"""Export: write a compressed model in a format other tools load, reload it, check it, move it into place.

* ``spec``       - ``ExportSpec`` (format, path, GGUF type, dtype, zip, overwrite) and ``ExportResult``.
* ``export``     - ``export_model``: write into a scratch folder -> reload -> verify -> rename into place.
* ``check``      - the reload check: both sides scored with the same exact math.
* ``hf``         - the Hugging Face folder (plain, or SqueezeLab's stored form: packed codes, sparse tensors).
* ``ct``         - llm-compressor's compressed-tensors ``pack-quantized`` format.
* ``gguf``       - GGUF for llama.cpp / ollama; ``gguf_arch`` each family's names, metadata and conventions,
                   ``gguf_vocab`` its tokenizer metadata.
* ``files``      - target checks, scratch names, free space, zips: nothing of the user's is touched.
* ``card``       - ``squeezelab.json`` and the model card.

Reading an export back is ``core.models.exported.load_exported``.
"""

from core.export.export import export_model, precheck, writable_formats
from core.export.files import check_target, remove_abandoned
from core.export.spec import DTYPES, FORMATS, GGUF_TYPES, ExportResult, ExportSpec
from core.models.exported import load_exported

__all__ = ["DTYPES", "FORMATS", "GGUF_TYPES", "ExportResult", "ExportSpec", "check_target", "export_model",
           "load_exported", "precheck", "remove_abandoned", "writable_formats"]
