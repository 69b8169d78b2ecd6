#!/bin/sh
# Sample the kernel's TCP sockets of some nodes of a running `peerlearn deploy --emulate`
# (docs/fidelity.md, "Linux's autotuned send buffer"): every PERIOD seconds, `ss -tmi` in the
# namespaces of the given node ids, each block headed by "## <unix time> node <id>".
# Usage (as root, while the run is going): ss_sample.sh OUT.txt PERIOD NODE [NODE ...]
out=$1 period=$2
shift 2
while :; do
  for i in "$@"; do
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^pl[0-9]+-$i\$"); do
      echo "## $(date +%s.%N) node $i $ns" >>"$out"
      ip netns exec "$ns" ss -tmi state established >>"$out" 2>&1
    done
  done
  sleep "$period"
done
