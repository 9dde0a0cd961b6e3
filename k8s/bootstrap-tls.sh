#!/bin/sh
# Creates the certificate Secrets an overlay's pods mount, for clusters without
# cert-manager: graspfleet-tls-<workload> (kubernetes.io/tls: tls.crt, tls.key,
# ca.crt), the same Secrets components/cert-manager would write. Each
# certificate's Common Name is the workload's identity (an arm's agent:
# robot-agent/<arm>) and it serves as the workload's server and client
# certificate. All are signed by a CA of the fleet's own, kept in --ca-dir and
# reused on later runs: run again to add an arm or to renew (the servers re-read
# their certificates, nothing restarts). A new CA needs every workload
# restarted. With --user, a person's client certificate instead (Common Name
# user/<name>), written to a folder. docs/operations.md, "TLS".
set -eu

usage() {
    cat <<EOF
usage: $0 [--overlay DIR] [--ca-dir DIR] [--days N] [--out DIR] [--user NAME]
  --overlay DIR  the kustomize tree you deploy (default: k8s/, the dev overlay):
                 one Secret for each graspfleet-tls-* Secret its pods mount
  --ca-dir DIR   the CA's ca.crt and ca.key, created when absent
                 (default: \${XDG_DATA_HOME:-\$HOME/.local/share}/graspfleet/ca)
  --days N       validity of the certificates (default: 365)
  --out DIR      write the Secret manifests to DIR instead of applying them
  --user NAME    write person NAME's client certificate (user/NAME) with the
                 CA's certificate to DIR (--out, default ./graspfleet-user-NAME)
EOF
    exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
overlay=$here
ca_dir=${XDG_DATA_HOME:-$HOME/.local/share}/graspfleet/ca
days=365
out=
user=
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage
    case $1 in
        --overlay) overlay=$2 ;;
        --ca-dir) ca_dir=$2 ;;
        --days) days=$2 ;;
        --out) out=$2 ;;
        --user) user=$2 ;;
        *) usage ;;
    esac
    shift 2
done
kubectl=${KUBECTL:-kubectl}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$ca_dir"
if [ ! -f "$ca_dir/ca.key" ]; then
    (umask 077 && openssl ecparam -name prime256v1 -genkey -noout -out "$ca_dir/ca.key")
    openssl req -x509 -new -key "$ca_dir/ca.key" -days 3650 -subj /CN=graspfleet-ca \
        -addext "basicConstraints = critical, CA:TRUE" \
        -addext "keyUsage = critical, keyCertSign, cRLSign" -out "$ca_dir/ca.crt"
    echo "new CA in $ca_dir: keep it to add arms and renew certificates later" >&2
fi

# issue IDENTITY USAGES [SUBJECT_ALT_NAMES]: tls.key and tls.crt in $work, signed by the CA.
issue() {
    {
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature"
        echo "extendedKeyUsage = $2"
        [ -z "${3:-}" ] || echo "subjectAltName = $3"
    } >"$work/ext"
    openssl ecparam -name prime256v1 -genkey -noout -out "$work/tls.key"
    openssl req -new -key "$work/tls.key" -subj "/CN=$(echo "$1" | sed 's|/|\\/|g')" \
        -out "$work/tls.csr"
    openssl x509 -req -in "$work/tls.csr" -CA "$ca_dir/ca.crt" -CAkey "$ca_dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$work/ext" \
        -out "$work/tls.crt" 2>/dev/null
}

if [ -n "$user" ]; then
    folder=${out:-graspfleet-user-$user}
    issue "user/$user" clientAuth
    mkdir -p "$folder"
    (umask 077 && cp "$work/tls.key" "$folder/tls.key")
    cp "$work/tls.crt" "$folder/tls.crt"
    cp "$ca_dir/ca.crt" "$folder/ca.crt"
    echo "user/$user: $folder (GRASPFLEET_TLS_CLIENT_DIR=$folder GRASPFLEET_TLS_CA=$folder/ca.crt)" >&2
    exit 0
fi

secrets=$("$kubectl" kustomize "$overlay" |
    sed -n 's/^ *secretName: \(graspfleet-tls-[a-z0-9.-]*\)$/\1/p' | sort -u)
[ -n "$secrets" ] || { echo "$overlay mounts no graspfleet-tls-* Secret" >&2; exit 1; }
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
    issue "$identity" "serverAuth, clientAuth" "$names, DNS:localhost, IP:127.0.0.1"
    "$kubectl" create secret generic "$secret" --namespace graspfleet \
        --type kubernetes.io/tls --from-file "tls.crt=$work/tls.crt" \
        --from-file "tls.key=$work/tls.key" --from-file "ca.crt=$ca_dir/ca.crt" \
        --dry-run=client --output yaml | sed '/creationTimestamp: null/d' \
        >"$manifests/$secret.yaml"
    echo "$secret: $identity" >&2
done

if [ -z "$out" ]; then
    "$kubectl" apply --filename "$manifests"
fi
