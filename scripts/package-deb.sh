#!/usr/bin/env bash
# `make deb`: the Debian package, target/debian/vpd_VERSION_ARCH.deb. Builds the release
# binary, has it write its own man pages and completions (debian/generated), packages them
# with cargo-deb (pinned below; installed when missing), and checks the result with lintian,
# which must report no errors. Its dependencies are the shared libraries the binary links,
# found by dpkg-shlibdeps, plus opencv-data (the cascade) and adduser (the vpd user).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.6.0
target=${CARGO_TARGET_DIR:-target}

if ! cargo deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
  echo "package-deb: installing cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
fi
cargo build --release --locked --quiet
bin="$target/release/vpd"

rm -rf debian/generated
mkdir -p debian/generated/completions
"$bin" manpages debian/generated/man
gzip -9n debian/generated/man/*.1
"$bin" completions bash >debian/generated/completions/vpd
"$bin" completions zsh >debian/generated/completions/_vpd
"$bin" completions fish >debian/generated/completions/vpd.fish
gzip -9n <debian/changelog >debian/generated/changelog.gz

mkdir -p target/debian
deb=$(cargo deb --no-build --locked --quiet --strip --output target/debian/)
echo "package-deb: $deb"
dpkg-deb --field "$deb" Depends
lintian --fail-on error --tag-display-limit 0 "$deb"
echo "package-deb: lintian reports no errors"

# What an operator relies on is in it.
contents=$(dpkg-deb --contents "$deb")
for path in usr/bin/vpd etc/vpd/vpd.toml lib/systemd/system/vpd-server.service \
  lib/systemd/system/vpd-worker@.service lib/systemd/system/vpd-preview.service \
  usr/share/man/man1/vpd.1.gz usr/share/man/man1/vpd-server.1.gz usr/share/man/man1/vpd-worker.1.gz \
  usr/share/bash-completion/completions/vpd usr/share/zsh/vendor-completions/_vpd \
  usr/share/fish/vendor_completions.d/vpd.fish; do
  grep -qF " $path" <<<"$contents" || { echo "package-deb: $path is missing from $deb" >&2; exit 1; }
done
[ "$(dpkg-deb --info "$deb" conffiles)" = /etc/vpd/vpd.toml ] ||
  { echo "package-deb: /etc/vpd/vpd.toml is not a conffile" >&2; exit 1; }
echo "package-deb: binary, units, conffile, man pages and completions are in it"
