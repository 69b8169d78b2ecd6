"""The sender's buffers below the process, as the flow model sees them at a flush.

Over real sockets a message leaves the node's own queue long before its last byte crosses the
link: the frame being written, ``frames`` more whole frames in ZeroMQ's pipe, and up to
``kernel_bytes`` in the kernel's TCP send buffer are already handed to the transport, and
``DropPending`` cannot take them back. In the flow model each (sender, receiver) connection is a
FIFO whose head transmits; at a flush its committed messages are

- the head (the frame being written: it is partly handed over, so all of it is committed),
- every following message whose first byte lies within ``kernel_bytes`` beyond what the
  connection has transmitted (it is at least partly in the kernel),
- then ``frames`` more whole messages (ZeroMQ's pipe).

Committed messages stay queued and are delivered at the rates the model gives them. Bytes that
have crossed the bottleneck are what TCP has had acknowledged, so "transmitted" plays the part of
the acknowledged sequence number and the kernel buffer holds the bytes just beyond it.
``network.recall_in_flight = false`` is the case ``kernel_bytes = 0, frames = 0``: only the head.

With ``autotune`` the kernel's share is not fixed but Linux's autotuned buffer of that connection
(``Autotune``): it grows with the bytes the connection has transmitted so far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from peerlearn.deploy.transport import DEALER_SNDHWM, LINUX_TCP_WMEM_MAX, kernel_send_buffer

#: net.ipv4.tcp_wmem's second field: a TCP socket's send buffer before autotuning touches it
LINUX_TCP_WMEM_DEFAULT = 16 * 1024


@dataclass(frozen=True)
class Autotune:
    """Linux's autotuned send buffer of one connection (no ``SO_SNDBUF`` set), in bytes.

    Linux sizes the buffer from the congestion window (``tcp_sndbuf_expand``):
    ``expand × cwnd × segment_memory`` bytes, where ``segment_memory`` is what one full segment
    costs in memory (2,304 bytes for a 1,448-byte MSS on the kernel measured: ``ss`` showed
    ``tb`` = 3 × 2,304 × cwnd exactly) and ``expand`` is 2, or 3 under BBR. It starts there with
    cwnd = ``init_cwnd``, never below ``wmem_default`` nor above ``wmem_max`` (the second and
    third fields of ``net.ipv4.tcp_wmem``), and never shrinks.

    The congestion window, in segments, is modelled as a function of the bytes the connection
    has had acknowledged (``acked``, the flow model's transmitted bytes): slow start adds one
    segment per segment acknowledged, ``init_cwnd + acked // mss``, until the window holds the
    connection's share of its path (``path_segments``: bandwidth-delay product plus the
    bottleneck's queue, divided among the connections sharing that queue) times ``cwnd_gain``.
    A loss-based congestion control (Reno, CUBIC) is cut back when it overfills the queue, so
    its window tops out at the share (gain 1); BBR keeps ``cwnd_gain`` (2) times its estimate of
    the path in flight and ignores the losses. Past that point the model's window stays put:
    the real one keeps moving (BBR's estimates drift; docs/fidelity.md), but the buffer only
    follows its peaks.

    A sender only writes while the socket polls writable: while the memory it has queued is at
    most ``writable`` (2/3) of the buffer (Linux wants free space of half what is queued), so
    that much of the buffer holds payload when a sender keeps it full.
    """

    expand: int = 2
    cwnd_gain: float = 1.0
    mss: int = 1448
    init_cwnd: int = 10
    segment_memory: int = 2304
    wmem_default: int = LINUX_TCP_WMEM_DEFAULT
    wmem_max: int = LINUX_TCP_WMEM_MAX
    writable: float = 2.0 / 3.0

    def __post_init__(self) -> None:
        ints = (self.expand, self.mss, self.init_cwnd, self.segment_memory, self.wmem_max)
        if min(ints) < 1 or self.wmem_default < 0 or not self.cwnd_gain > 0:
            raise ValueError(f"autotune needs positive sizes and gains, got {self}")
        if not 0 < self.writable <= 1:
            raise ValueError(f"autotune needs 0 < writable <= 1, got {self.writable}")

    def cwnd(self, acked: float, path_segments: float) -> int:
        """Congestion window (segments) after ``acked`` bytes, on a path holding
        ``path_segments`` for this connection (inf: no bound but the buffer's)."""
        grown = self.init_cwnd + int(acked // self.mss)
        bound = self.cwnd_gain * path_segments
        if bound < grown:  # inf never is: then the window only stops at wmem_max
            grown = max(self.init_cwnd, math.floor(bound))
        return grown

    def sndbuf(self, acked: float, path_segments: float) -> int:
        """The socket's send buffer (bytes of memory, ``ss``'s ``tb``)."""
        # the window's bound may be inf: stop at what wmem_max allows first
        top = -(-self.wmem_max // (self.expand * self.segment_memory))
        want = self.expand * self.segment_memory * min(self.cwnd(acked, path_segments), top)
        return min(self.wmem_max, max(self.wmem_default, want))

    def kernel_bytes(self, acked: float, path_segments: float) -> float:
        """Payload the kernel holds beyond the acknowledged bytes when the sender keeps the
        buffer as full as the socket lets it."""
        return self.writable * self.sndbuf(acked, path_segments)


#: per congestion control (net.ipv4.tcp_congestion_control): Linux's default, BBR, and Reno
#: (loss-based and without its own ``sndbuf_expand``, as CUBIC)
AUTOTUNE = {
    "cubic": Autotune(expand=2, cwnd_gain=1.0),
    "bbr": Autotune(expand=3, cwnd_gain=2.0),
    "reno": Autotune(expand=2, cwnd_gain=1.0),
}

#: packets the shaper's queue holds: the HTB leaf's default pfifo takes the device's txqueuelen,
#: 1000 for the veth pairs of ``peerlearn deploy --emulate`` (deploy/emulate.py)
SHAPER_QUEUE_PACKETS = 1000


@dataclass(frozen=True)
class SendBuffer:
    kernel_bytes: float  # bytes beyond the transmitted ones the kernel may hold per connection
    frames: int  # whole messages queued above the kernel (ZeroMQ's pipe)
    # Linux's autotuning instead of a fixed kernel_bytes (which is then only its upper bound)
    autotune: Autotune | None = None
    queue_packets: int = SHAPER_QUEUE_PACKETS  # the bottleneck's queue, for autotune's path

    def __post_init__(self) -> None:
        if not self.kernel_bytes >= 0 or self.frames < 0:  # also rejects nan
            raise ValueError(f"send buffer needs kernel_bytes >= 0 and frames >= 0, got {self}")
        if self.queue_packets < 0:
            raise ValueError(f"send buffer needs queue_packets >= 0, got {self.queue_packets}")

    def committed(
        self, head_left: float, sizes: Sequence[float], kernel_bytes: float | None = None
    ) -> int:
        """How many messages of a connection are committed: ``sizes`` are the queued ones in
        order, the head first; ``head_left`` is the head's bytes not yet transmitted;
        ``kernel_bytes`` replaces the fixed size (the connection's autotuned buffer)."""
        if not sizes:
            return 0
        kernel = self.kernel_bytes if kernel_bytes is None else kernel_bytes
        k, first = 1, head_left  # offset of message k's first byte beyond the transmitted ones
        while k < len(sizes) and first < kernel:
            first += sizes[k]
            k += 1
        return min(len(sizes), k + self.frames)


def autotuned(congestion: str | None, frames: int | None) -> SendBuffer:
    """Linux's autotuned buffer under ``congestion`` (None: CUBIC, Linux's default)."""
    tune = AUTOTUNE[congestion or "cubic"]
    return SendBuffer(
        tune.writable * tune.wmem_max, DEALER_SNDHWM if frames is None else frames, tune
    )


def send_buffer_of(network, deploy) -> SendBuffer | None:
    """The model the ``[network]`` section asks for (None: a flush recalls every pending message).

    ``send_buffer = "deploy"`` sizes it as ``peerlearn deploy`` sets its sockets:
    ``deploy.sndbuf_bytes`` doubled, or Linux's autotuning when it is 0 (as ``"autotune"``),
    and the DEALER's high-water mark as whole frames. An autotuned buffer grows as
    ``network.tcp_congestion`` says, or, when that is unset, as the congestion control that
    ``deploy.tcp_congestion`` gives the emulated namespaces (``"system"``: CUBIC).
    """
    size, frames = network.send_buffer, network.send_buffer_frames
    if size == "autotune" or (size == "deploy" and not deploy.sndbuf_bytes):
        congestion = network.tcp_congestion
        if congestion is None and deploy.tcp_congestion != "system":
            congestion = deploy.tcp_congestion
        return autotuned(congestion, frames)
    if size == "deploy":
        kernel = kernel_send_buffer(deploy.sndbuf_bytes)
        return SendBuffer(kernel, DEALER_SNDHWM if frames is None else frames)
    if size or frames or not network.recall_in_flight:
        return SendBuffer(size, frames or 0)
    return None
