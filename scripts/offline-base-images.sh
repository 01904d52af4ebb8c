#!/usr/bin/env bash
# Make the base image the Dockerfiles start from, python:3.11-slim, available to the Docker
# engine at DOCKER_HOST, on machines that reach no image registry.
#
#   bash scripts/offline-base-images.sh
#
# If the tag is there already, or can be pulled, nothing else happens. Otherwise a stand-in is
# built and tagged python:3.11-slim: a Debian bookworm rootfs from `debootstrap --variant=minbase`
# with Debian's python3 (3.11), pip and venv, `python`/`pip` links and the EXTERNALLY-MANAGED
# marker removed, so an unchanged `FROM python:3.11-slim` builds. Details:
#  - the apt mirror is the one this machine's own apt sources name (/etc/apt/sources.list and
#    sources.list.d, one-line and deb822 formats); no host is written into this script;
#  - the CA certificates this machine added (/usr/local/share/ca-certificates) are trusted inside,
#    so pip reaches PyPI from builds wherever this machine does;
#  - apt inside accepts a dated snapshot mirror (Acquire::Check-Valid-Until "false").
# Needs root, debootstrap and about a minute. Variables: BASE_IMAGE (default python:3.11-slim),
# SUITE (default bookworm, whose python3 is 3.11).
set -euo pipefail

image=${BASE_IMAGE:-python:3.11-slim}
suite=${SUITE:-bookworm}

say() { echo "offline-base-images: $*" >&2; }

if docker image inspect "$image" >/dev/null 2>&1; then
    say "$image is present"
    exit 0
fi
if timeout 120 docker pull "$image" >/dev/null 2>&1; then
    say "pulled $image"
    exit 0
fi
say "$image cannot be pulled: building a stand-in from Debian $suite"

[ "$(id -u)" = 0 ] || { say "debootstrap needs root"; exit 1; }
command -v debootstrap >/dev/null || { say "debootstrap is missing: apt-get install -y debootstrap"; exit 1; }

# The mirrors this machine's apt uses: prints "MIRROR [SECURITY_MIRROR]" for the suite.
read -r mirror security_mirror < <(python3 - "$suite" <<'PY'
import glob
import re
import sys

suite = sys.argv[1]
entries = []  # (types, uris, suites)

def one_line(path):
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line)  # options such as [signed-by=...]
        fields = line.split()
        if len(fields) >= 3:
            entries.append(({fields[0]}, [fields[1]], {fields[2]}))

def deb822(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    for stanza in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "uris" in fields and "suites" in fields:
            entries.append((set(fields.get("types", "deb").split()),
                            fields["uris"].split(), set(fields["suites"].split())))

for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        one_line(path)
    except FileNotFoundError:
        pass
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    deb822(path)

def find(suite_name, path_suffix):
    debs = [(u, s) for t, u, s in entries if "deb" in t]
    for uris, suites in debs:  # an entry for exactly this suite
        if suite_name in suites:
            return uris[0]
    for uris, suites in debs:  # a Debian archive serving another suite
        for uri in uris:
            if uri.rstrip("/").endswith(path_suffix):
                return uri
    return ""

mirror = find(suite, "/debian")
if not mirror:
    sys.exit(f"no Debian mirror for {suite} in this machine's apt sources")
print(mirror, find(f"{suite}-security", "/debian-security") or "-")
PY
)
say "apt mirror: $mirror (security: $security_mirror)"

work=$(mktemp -d /var/tmp/rnnserve-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

debootstrap --variant=minbase \
    --include=ca-certificates,passwd,python3,python3-pip,python3-venv \
    "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; say "debootstrap failed"; exit 1; }

# apt inside the image: the same mirrors, and a dated snapshot's Release files accepted.
{
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$mirror" "$suite" "$suite"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ "$security_mirror" != - ]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$security_mirror" "$suite"
        printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
} >"$rootfs/etc/apt/sources.list.d/debian.sources"
: >"$rootfs/etc/apt/sources.list"
echo 'Acquire::Check-Valid-Until "false";' >"$rootfs/etc/apt/apt.conf.d/99check-valid-until"
# Like the official slim images: no recommends, no apt caches.
echo 'APT::Install-Recommends "false";' >"$rootfs/etc/apt/apt.conf.d/99no-recommends"

# Trust the CA certificates this machine added itself.
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    cp -r /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/"
fi
chroot "$rootfs" update-ca-certificates --fresh >"$work/update-ca-certificates.log" 2>&1 \
    || { cat "$work/update-ca-certificates.log" >&2; exit 1; }

# What `FROM python:3.11-slim` expects: python and pip on PATH, pip free to install.
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED

# Slim: no apt caches, manuals or translations (the licences in /usr/share/doc stay).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/root/.cache \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
chroot "$rootfs" python3 -c "import ssl, venv, ensurepip; print('stand-in python', __import__('sys').version.split()[0])" >&2

tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change "LABEL org.rnnserve.stand-in=\"debootstrap $suite minbase + python3, from scripts/offline-base-images.sh\"" \
    --change 'CMD ["python3"]' \
    - "$image" >/dev/null
say "built $image (stand-in): $(docker image inspect --format '{{.Size}}' "$image" | numfmt --to=iec) "
