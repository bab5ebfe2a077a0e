#!/usr/bin/env bash
# Best effort, for `make test`: the system packages some tests read or drive, installed with
# apt-get where it exists and we are root (or have password-less sudo). Tests that need a missing
# one skip and say so, so this never fails the build.
#   dataset-fashion-mnist    the real 70,000-image Fashion-MNIST corpus (full-size tests)
#   chromium chromium-driver headless browser for the search page's tests
set -uo pipefail

wanted=()
[ -d /usr/share/datasets/fashion-mnist ] || wanted+=(dataset-fashion-mnist)
{ command -v chromium && command -v chromedriver; } >/dev/null || wanted+=(chromium chromium-driver)
((${#wanted[@]})) || exit 0

if ! command -v apt-get >/dev/null; then
    echo "note: no apt-get; tests needing ${wanted[*]} will skip" >&2
    exit 0
fi
run=()
if [ "$(id -u)" -ne 0 ]; then
    if ! sudo -n true 2>/dev/null; then
        echo "note: not root and no password-less sudo; tests needing ${wanted[*]} will skip" >&2
        echo "      (install them with: sudo apt-get install ${wanted[*]})" >&2
        exit 0
    fi
    run=(sudo -n)
fi
echo "installing ${wanted[*]} with apt-get" >&2
{ "${run[@]}" apt-get update -q && "${run[@]}" apt-get install -y -q "${wanted[@]}"; } ||
    echo "warning: could not install ${wanted[*]}; the tests needing them will skip" >&2
exit 0
