#!/bin/sh
# dev-reload.sh COMMAND PACKAGE...: make an image's COMMAND restart whenever the code of
# the PACKAGEs changes in its site-packages (Tilt's live update syncs it there). Run as
# root by the Dockerfile's *-dev stages; never in an image that is deployed.
set -eu
command=$1
shift
site=/opt/venv/lib/python3.11/site-packages
dirs=""
for package in "$@"; do
  dirs="$dirs $site/$package"
done
/opt/venv/bin/pip install "watchfiles>=0.24,<2"
# shellcheck disable=SC2086  # one word per package directory
chown -R 10001:10001 $dirs
mv "/opt/venv/bin/$command" "/opt/venv/bin/$command-real"
printf '#!/bin/sh\nexec watchfiles --filter python "%s-real $*"%s\n' "$command" "$dirs" \
  > "/opt/venv/bin/$command"
chmod 755 "/opt/venv/bin/$command"
