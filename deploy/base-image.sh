#!/usr/bin/env bash
# A runtime base image for deploy/Dockerfile made from Debian packages on this host, for
# hosts that reach no container registry (air-gapped, on-prem, this project's CI): what
# gcr.io/distroless/cc-debian12:nonroot gives the image, and no more. The C and C++ runtime
# libraries the binary and ONNX Runtime link (libc6, libgcc-s1, libstdc++6), the CA bundle
# HTTPS fetches verify against (ca-certificates, and this host's own CAs), a nonroot user 65532, a /tmp. No shell, no
# package manager. glibc's iconv modules and the packages' docs are left out: nothing in the
# image uses them.
#
#   deploy/base-image.sh [TAG]     # default localhost/wasmserve-base:debian12
#   podman build -f deploy/Dockerfile --build-arg RUNTIME_IMAGE=localhost/wasmserve-base:debian12 ...
#
# Needs apt (a Debian host with its package lists) and podman, as root.
set -euo pipefail
tag=${1:-localhost/wasmserve-base:debian12}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/debs" "$work/root"
(cd "$work/debs" && apt-get download libc6 libgcc-s1 libstdc++6 ca-certificates 2> /dev/null)
for deb in "$work"/debs/*.deb; do
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/root" \
    --exclude='./usr/share/doc*' --exclude='./usr/share/lintian*' --exclude='./usr/share/man*' \
    --exclude='./usr/lib/x86_64-linux-gnu/gconv*' --exclude='./usr/lib/aarch64-linux-gnu/gconv*' \
    --exclude='./usr/sbin*' --exclude='./usr/bin*' --exclude='./sbin*' --exclude='./etc/ld.so.conf.d*'
done
cd "$work/root"
# What ca-certificates' postinst (update-ca-certificates) makes: Mozilla's roots and the
# host's own CAs (/usr/local/share/ca-certificates: a corporate proxy's, say, without which
# the server's HTTPS fetches fail with UnknownIssuer behind that proxy).
mkdir -p etc/ssl/certs tmp home/nonroot
cat usr/share/ca-certificates/mozilla/*.crt > etc/ssl/certs/ca-certificates.crt
find /usr/local/share/ca-certificates -name '*.crt' -exec cat {} + >> etc/ssl/certs/ca-certificates.crt 2> /dev/null || true
rm -rf usr/share/ca-certificates
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > etc/passwd
printf 'root:x:0:\nnonroot:x:65532:\n' > etc/group
chmod 1777 tmp
chown 65532:65532 home/nonroot
tar -c --numeric-owner . | podman import --quiet --change 'USER 65532:65532' - "$tag" > /dev/null
echo "$tag"
