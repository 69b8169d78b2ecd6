"""Swift baseline as the DivShare artifact runs it: DivShare's code path with one fragment.

Wait-free: after each local training the node pushes its whole model to r random peers and
averages (uniformly) its own model with the newest model from each sender received since its last
aggregation. Nothing is ever dropped, so a slow uplink builds a backlog and its receivers get
older and older models; that is the effect DivShare's flush removes. The original SWIFT (Bornstein
et al., ICLR 2023) uses client-specific weights and a fixed neighbourhood; the artifact (and this
class) uses uniform weights and random recipients on a fully connected graph.
"""

from __future__ import annotations

from peerlearn.protocols.fragments import FragmentGossip


class Swift(FragmentGossip):
    name = "swift"
    description = "asynchronous wait-free push of the full model to r random peers, no dropping"
    n_fragments = 1
    flush = False
