#!/bin/sh
# Sample the shaper queues of a running `peerlearn deploy --emulate` (docs/fidelity.md,
# "GSO packets in the shaper's queues"): every PERIOD seconds, `tc -s qdisc show` and
# `tc -s class show` in the namespaces of the given node ids and in the bridge namespace,
# each block headed by "## <unix time> <namespace> <qdisc|class>"; the veths' offload settings
# (`ethtool -k`) once, when the namespaces first appear.
# Usage (as root, while the run is going): tc_sample.sh OUT.txt PERIOD NODE [NODE ...]
out=$1 period=$2
shift 2
features=""
while :; do
  for ns in $(ip netns list | awk '{print $1}' | grep -E '^pl[0-9]+-'); do
    id=${ns##*-}
    want=""
    [ "$id" = br ] && want=1
    for i in "$@"; do [ "$id" = "$i" ] && want=1; done
    [ -n "$want" ] || continue
    echo "## $(date +%s.%N) $ns qdisc" >>"$out"
    ip netns exec "$ns" tc -s qdisc show >>"$out" 2>&1
    # `tc class show` needs a device: eth0 in a node, every veth end in the bridge
    for dev in $(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^(eth0|v[0-9]+)$'); do
      echo "## $(date +%s.%N) $ns class $dev" >>"$out"
      ip netns exec "$ns" tc -s class show dev "$dev" >>"$out" 2>&1
    done
    if [ -z "$features" ] && [ "$id" = br ]; then
      for dev in $(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^v'); do
        echo "## ethtool $ns $dev" >>"$out"
        ip netns exec "$ns" ethtool -k "$dev" | grep -E 'segmentation|receive-offload' >>"$out"
      done
      for n in "$@"; do
        for nns in $(ip netns list | awk '{print $1}' | grep -E "^pl[0-9]+-$n\$"); do
          echo "## ethtool $nns eth0" >>"$out"
          ip netns exec "$nns" ethtool -k eth0 | grep -E 'segmentation|receive-offload' >>"$out"
          ip -n "$nns" -d link show eth0 | grep -o 'gso_max_[a-z]* [0-9]*' >>"$out"
        done
      done
      features=1
    fi
  done
  sleep "$period"
done
