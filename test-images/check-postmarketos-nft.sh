#!/bin/sh
# Checks overlays/postmarketos/etc/nftables.d/*.nft with `nft -c` against a stand-in for
# postmarketOS's /etc/nftables.nft (table inet filter; input and forward chains with policy
# drop; the drop-ins included after it). Needs nft and either root or unprivileged user
# namespaces; runs in a new network namespace, so the host's ruleset is never touched.
# usage: test-images/check-postmarketos-nft.sh
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
command -v nft >/dev/null || { echo "check-postmarketos-nft: nft not installed (apt-get install nftables)" >&2; exit 2; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cat >"$T/nftables.nft" <<NFT
flush ruleset
table inet filter {
    chain input { type filter hook input priority 0; policy drop; iifname lo accept; }
    chain forward { type filter hook forward priority 0; policy drop; }
    chain output { type filter hook output priority 0; policy accept; }
}
include "$HERE/overlays/postmarketos/etc/nftables.d/*.nft"
NFT
if [ "$(id -u)" = 0 ]; then ns="unshare -n"; else ns="unshare -rn"; fi
$ns nft -c -f "$T/nftables.nft"
# Loaded for real inside the namespace: the forward chain must now accept pod traffic.
out=$($ns sh -c "nft -f '$T/nftables.nft' && nft list chain inet filter forward")
for dev in cni0 flannel.1 'veth\*'; do
    echo "$out" | grep -q "iifname .*\"$dev\"" || { echo "check-postmarketos-nft: forward chain lacks $dev" >&2; exit 1; }
done
echo "check-postmarketos-nft: ok"
