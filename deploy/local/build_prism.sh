#!/usr/bin/env bash
# Builds the Prism runner binary for a Beam version from the Go module proxy, once, into
# $CACHE/bin/prism-v<version> (what ae_pipeline.local.paths.prism_binary looks for).
# Usage: build_prism.sh BEAM_VERSION
set -euo pipefail
CACHE="${AE_PIPELINE_CACHE:-$HOME/.cache/ae-pipeline}"
VERSION="$1"
PRISM="$CACHE/bin/prism-v$VERSION"
if [ ! -x "$PRISM" ]; then
  echo "bootstrap: building Prism v$VERSION from the Go module proxy"
  mkdir -p "$CACHE/bin" "$CACHE/gobuild"
  # The checksum database does not serve every Beam tag through the proxy here; the module
  # proxy itself still verifies the zip it serves.
  (cd "$CACHE/gobuild" && GOBIN="$CACHE/gobuild/bin" GONOSUMDB=github.com/apache/beam \
     go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$VERSION")
  mv "$CACHE/gobuild/bin/prism" "$PRISM"
fi
