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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from peerlearn.deploy.transport import DEALER_SNDHWM, kernel_send_buffer


@dataclass(frozen=True)
class SendBuffer:
    kernel_bytes: float  # bytes beyond the transmitted ones the kernel may hold per connection
    frames: int  # whole messages queued above the kernel (ZeroMQ's pipe)

    def __post_init__(self) -> None:
        if not self.kernel_bytes >= 0 or self.frames < 0:  # also rejects nan
            raise ValueError(f"send buffer needs kernel_bytes >= 0 and frames >= 0, got {self}")

    def committed(self, head_left: float, sizes: Sequence[float]) -> int:
        """How many messages of a connection are committed: ``sizes`` are the queued ones in
        order, the head first; ``head_left`` is the head's bytes not yet transmitted."""
        if not sizes:
            return 0
        k, first = 1, head_left  # offset of message k's first byte beyond the transmitted ones
        while k < len(sizes) and first < self.kernel_bytes:
            first += sizes[k]
            k += 1
        return min(len(sizes), k + self.frames)


def send_buffer_of(network, deploy) -> SendBuffer | None:
    """The model the ``[network]`` section asks for (None: a flush recalls every pending message).

    ``send_buffer = "deploy"`` sizes it as ``peerlearn deploy`` sets its sockets:
    ``deploy.sndbuf_bytes`` doubled (Linux's autotuning bound when 0) and the DEALER's
    high-water mark as whole frames.
    """
    size, frames = network.send_buffer, network.send_buffer_frames
    if size == "deploy":
        kernel = kernel_send_buffer(deploy.sndbuf_bytes)
        return SendBuffer(kernel, DEALER_SNDHWM if frames is None else frames)
    if size or frames or not network.recall_in_flight:
        return SendBuffer(size, frames or 0)
    return None
