"""How the deployment sizes the buffers below a node process (read by the simulator's model).

A node hands one frame at a time to a DEALER whose high-water mark is ``DEALER_SNDHWM``; below it
ZeroMQ writes the frame into the kernel's TCP send buffer. Linux doubles the ``SO_SNDBUF`` asked
for (to leave room for its bookkeeping); with no value set it autotunes the buffer up to the
third field of ``net.ipv4.tcp_wmem``. Kept free of zmq and torch so the simulator can import it.
"""

from __future__ import annotations

#: ZeroMQ send high-water mark of every DEALER (messages): the backlog stays in the process
DEALER_SNDHWM = 1

#: Linux's default upper bound for an autotuned TCP send buffer (net.ipv4.tcp_wmem, third field)
LINUX_TCP_WMEM_MAX = 4 * 1024 * 1024


def kernel_send_buffer(sndbuf_bytes: int) -> int:
    """Bytes the kernel holds per connection for ``deploy.sndbuf_bytes`` (0: Linux's default).

    ``setsockopt(SO_SNDBUF, v)`` gives ``2 v`` (values above ``net.core.wmem_max`` are cut to it
    first, which this does not model); with nothing set the kernel may grow it to
    ``LINUX_TCP_WMEM_MAX``.
    """
    if sndbuf_bytes < 0:
        raise ValueError(f"sndbuf_bytes must be >= 0, got {sndbuf_bytes}")
    return 2 * sndbuf_bytes if sndbuf_bytes else LINUX_TCP_WMEM_MAX
