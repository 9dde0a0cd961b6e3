#!/bin/sh
# Creates the certificate Secrets an overlay's pods mount, for clusters without
# cert-manager: graspfleet-tls-<workload> (kubernetes.io/tls: tls.crt, tls.key,
# ca.crt), the same Secrets components/cert-manager would write. Each
# certificate's Common Name is the workload's identity (an arm's agent:
# robot-agent/<arm>) and it serves as the workload's server and client
# certificate. All are signed by a CA of the fleet's own, kept in --ca-dir and
# reused on later runs: run again to add an arm or to renew (the servers re-read
# their certificates, nothing restarts). A new CA needs every workload
# restarted. docs/operations.md, "TLS".
set -eu

usage() {
    cat <<EOF
usage: $0 [--overlay DIR] [--ca-dir DIR] [--days N] [--out DIR]
  --overlay DIR  the kustomize tree you deploy (default: k8s/, the dev overlay):
                 one Secret for each graspfleet-tls-* Secret its pods mount
  --ca-dir DIR   the CA's ca.crt and ca.key, created when absent
                 (default: \${XDG_DATA_HOME:-\$HOME/.local/share}/graspfleet/ca)
  --days N       validity of the workloads' certificates (default: 365)
  --out DIR      write the Secret manifests to DIR instead of applying them
EOF
    exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
overlay=$here
ca_dir=${XDG_DATA_HOME:-$HOME/.local/share}/graspfleet/ca
days=365
out=
while [ $# -gt 0 ]; do
    case $1 in
        --overlay) overlay=$2; shift 2 ;;
        --ca-dir) ca_dir=$2; shift 2 ;;
        --days) days=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) usage ;;
    esac
done
kubectl=${KUBECTL:-kubectl}
namespace=graspfleet

secrets=$("$kubectl" kustomize "$overlay" |
    sed -n 's/^ *secretName: \(graspfleet-tls-[a-z0-9.-]*\)$/\1/p' | sort -u)
[ -n "$secrets" ] || { echo "$overlay mounts no graspfleet-tls-* Secret (no tls component?)" >&2; exit 1; }

mkdir -p "$ca_dir"
if [ ! -f "$ca_dir/ca.key" ]; then
    (umask 077 && openssl ecparam -name prime256v1 -genkey -noout -out "$ca_dir/ca.key")
    openssl req -x509 -new -key "$ca_dir/ca.key" -days 3650 -subj /CN=graspfleet-ca \
        -addext "basicConstraints = critical, CA:TRUE" \
        -addext "keyUsage = critical, keyCertSign, cRLSign" -out "$ca_dir/ca.crt"
    echo "new CA in $ca_dir: keep it to add arms and renew certificates later" >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
manifests=${out:-$work/manifests}
mkdir -p "$manifests"

for secret in $secrets; do
    workload=${secret#graspfleet-tls-}
    case $workload in
        robot-agent-*)
            arm=${workload#robot-agent-}
            identity="robot-agent/$arm"
            names="DNS:robot-agent,DNS:robot-agent-$arm-0.robot-agent" ;;
        *)
            identity=$workload
            names="DNS:$workload" ;;
    esac
    cat >"$work/ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = $names, DNS:localhost, IP:127.0.0.1
EOF
    openssl ecparam -name prime256v1 -genkey -noout -out "$work/tls.key"
    openssl req -new -key "$work/tls.key" -subj "/CN=$(echo "$identity" | sed 's|/|\\/|g')" \
        -out "$work/tls.csr"
    openssl x509 -req -in "$work/tls.csr" -CA "$ca_dir/ca.crt" -CAkey "$ca_dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$work/ext" \
        -out "$work/tls.crt" 2>/dev/null
    "$kubectl" create secret generic "$secret" --namespace "$namespace" \
        --type kubernetes.io/tls --from-file "tls.crt=$work/tls.crt" \
        --from-file "tls.key=$work/tls.key" --from-file "ca.crt=$ca_dir/ca.crt" \
        --dry-run=client --output yaml | sed '/creationTimestamp: null/d' \
        >"$manifests/$secret.yaml"
    echo "$secret: $identity" >&2
done

if [ -z "$out" ]; then
    "$kubectl" apply --filename "$manifests"
fi
