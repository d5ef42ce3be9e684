"""Re-quantizes the Q4_1 tensors of a GGUF file to another GGUF type (Q8_0), bit for bit
reproducibly, copying every metadata key and every other tensor unchanged.

Why: candle (under mistral.rs) has no SIMD kernel for Q4_1 but a fast AVX2 one for Q8_0, so the
derived file runs about twice as fast on a CPU (BENCHMARKS.md). Q8_0 represents every Q4_1 value
to within its own rounding step, so answers barely change.

Run by tiergate with pinned gguf and numpy (see src/inference/weights.rs), so that the output's
sha256 is the one recorded in the model card:
    python3 requantize_gguf.py <source.gguf> <output.gguf> Q8_0
"""
import sys

import gguf
from gguf import GGMLQuantizationType


def main(source: str, output: str, target_name: str) -> None:
    target = GGMLQuantizationType[target_name]
    reader = gguf.GGUFReader(source)
    architecture = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(output, arch=architecture, endianess=reader.endianess)
    for key, field in reader.fields.items():
        # GGUF.* are the reader's view of the header; the writer sets the architecture itself.
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        if tensor.tensor_type == GGMLQuantizationType.Q4_1:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            data = gguf.quants.quantize(values, target)
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=target)
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
