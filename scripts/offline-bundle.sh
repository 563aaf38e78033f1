#!/usr/bin/env bash
# Everything a host without internet needs to run the workflow, in one directory DIR:
#   DIR/wheels/          wheels for CPython 3.12 on manylinux x86_64 of the runtime packages
#                        (numpy and torch are left out: such a host brings its own)
#   DIR/site/llama_cpp/  the pure-Python llama-cpp-python binding of the pinned version
#   DIR/llama.cpp.tar.xz the pinned llama.cpp source, trimmed to what the build and the convert
#                        script use; unpack it and name it in GGUF_FORGE_LLAMA_CPP_SRC
# Run here (where PyPI is reachable), after `make install`; benchmarks/gpu_measure.sh uses it.
# Usage: scripts/offline-bundle.sh DIR
set -euo pipefail

dir=${1:?usage: scripts/offline-bundle.sh DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
version=$("$python" -c 'import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))["toolchain"]["llama_cpp_python_version"])' \
    "$root/config/config.yaml")
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. Wheels: resolve and build here (some dependencies exist only as sdists), then swap every
#    wheel compiled for this interpreter for the CPython 3.12 build of the same version.
"$python" -m pip wheel --quiet -w "$work/wheels" "snakemake==9.27.1" "gguf==0.19.0" "jsonschema>=4.20" diskcache \
    "transformers==4.57.6" "sentencepiece==0.2.1" "protobuf==5.29.5" 2>&1 | grep -v '^WARNING: Location' || true
rm -f "$work"/wheels/numpy-*.whl
mkdir -p "$dir/wheels"
for wheel in "$work"/wheels/*.whl; do
    name=$(basename "$wheel")
    case $name in
    *-py3-none-any.whl | *-py2.py3-none-any.whl | *-abi3-*.whl) cp "$wheel" "$dir/wheels/" ;;
    *)
        spec=$(echo "$name" | cut -d- -f1,2 | sed 's/-/==/')
        "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
            --platform manylinux_2_5_x86_64 -d "$dir/wheels" "$spec" 2>&1 | grep -v '^WARNING: Location' || true
        ;;
    esac
done

# 2. The sdist (cached by the toolchain) holds both the binding and the vendored llama.cpp.
sdist=$("$python" -c 'import sys
from workflow_scripts.toolchain import cache_root, ensure_sdist
print(ensure_sdist(sys.argv[1], cache_root(), sys.stderr))' "$version")
prefix=llama_cpp_python-$version
tar -xzf "$sdist" -C "$work" "$prefix/llama_cpp" "$prefix/vendor/llama.cpp" "$prefix/.git/modules/vendor/llama.cpp/HEAD"
rm -rf "$dir/site" && mkdir -p "$dir/site" && cp -r "$work/$prefix/llama_cpp" "$dir/site/"

# 3. llama.cpp minus what neither the CMake build (tools and llama-server on, tests/examples and the
#    server's web UI off; CPU or CUDA) nor convert_hf_to_gguf.py reads: docs, test data, vocab
#    files, the web UI's sources (its CMake needs only CMakeLists.txt and the ui.*.in templates),
#    other backends.
src=$work/$prefix/vendor/llama.cpp
(cd "$src" && rm -rf docs tests models media benches examples pocs ci .github .devops skills \
    ggml/src/ggml-{cann,et,hexagon,metal,opencl,openvino,sycl,virtgpu,vulkan,webgpu,zdnn,zendnn})
find "$src/tools/ui" -mindepth 1 -maxdepth 1 ! -name CMakeLists.txt ! -name 'ui.*.in' -exec rm -rf {} +
cp "$work/$prefix/.git/modules/vendor/llama.cpp/HEAD" "$src/.forge-commit"
echo "$version" >"$src/.forge-version"
tar -C "$work/$prefix/vendor" -cJf "$dir/llama.cpp.tar.xz" llama.cpp
du -sh "$dir"/wheels "$dir"/site "$dir"/llama.cpp.tar.xz
