#!/usr/bin/env bash
# Print the folder of llama.cpp's convert_hf_to_gguf.py, unpacked once from the llama-cpp-python
# source distribution on PyPI (it vendors llama.cpp); prints nothing if PyPI is out of reach.
set -uo pipefail
cache="${TOKENSURGEON_CACHE:-$HOME/.cache/tokensurgeon}/llama-cpp"
version=0.3.36
target="$cache/llama_cpp_python-$version/vendor/llama.cpp"
if [ ! -f "$target/convert_hf_to_gguf.py" ]; then
  mkdir -p "$cache"
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$cache" >&2 \
    && tar -xzf "$cache/llama_cpp_python-$version.tar.gz" -C "$cache" \
    || { echo "llama_cpp_converter: could not fetch llama-cpp-python $version from PyPI" >&2; exit 0; }
fi
echo "$target"
