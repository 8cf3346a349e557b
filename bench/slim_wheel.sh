#!/usr/bin/env bash
# Slim copies of the GPU machine's largest wheels, so they travel with the tree (64 MiB in all):
#   bench/slim_wheel.sh DIR   (DIR holds ai_edge_litert-2.3.0-cp312-*.whl and pynvvideocodec-2.2.4-cp312-*.whl)
# LiteRT without its WebGPU accelerator, vendor compiler plugins and apply_plugin_main (fer's
# interpreter loads none of them: tests/test_blazeface.py passes without them); PyNvVideoCodec
# without the FFmpeg source tarball it ships and the duplicate copies of its two FFmpeg libraries
# (its extension needs libavformat.so.63 and libavutil.so.61). bench/gpu.sh unpacks both into /tmp/site.
set -euo pipefail
dir=$(cd "$1" && pwd); out="$(cd "$(dirname "$0")/.." && pwd)/.whl"; mkdir -p "$out"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && mkdir lit nv \
  && cd lit && unzip -q "$dir"/ai_edge_litert-2.3.0-cp312-*.whl \
  && rm -rf ai_edge_litert/libLiteRtWebGpuAccelerator.so ai_edge_litert/tools/apply_plugin_main ai_edge_litert/vendors \
  && tar czf "$out/litert-2.3.0-slim.tar.gz" . \
  && cd ../nv && unzip -q "$dir"/pynvvideocodec-2.2.4-cp312-*.whl 'PyNvVideoCodec/*' 'pynvvideocodec./*' 'pynvvideocodec-2.2.4.dist-info/*' \
  && rm PyNvVideoCodec/libavformat.so PyNvVideoCodec/libavformat.so.63.1.101 PyNvVideoCodec/libavutil.so PyNvVideoCodec/libavutil.so.61.1.101 \
  && tar czf "$out/pynvvideocodec-2.2.4-slim.tar.gz" .)
ls -l "$out"
