"""fpzip decoding of received blobs in a child process, so that a crafted blob cannot kill a node.

fpzip's C decoder trusts its input: it reads past the end of the buffer and indexes its
probability tables with decoded symbols unchecked. Fuzzing it with *valid* headers and corrupt
bodies (tests/test_deploy_fuzz.py) segfaults most of the time, so no check made before the call
can make it safe. The header is still checked here, in Python (``codecs.fpzip_header``: type,
precision, dims against the expected count), which bounds what the child allocates and rejects
most forgeries without a round trip; the body is then decoded by a long-lived child process
(``python -m peerlearn.deploy.decoder``): a crash costs that child, is counted
(``decoder_crashed``), and the next blob gets a fresh one; a hang is cut by a timeout
(``decoder_timeout``). A forged body that does not crash still makes fpzip read past it and
return whatever memory held, so the child re-encodes what it decoded and accepts the blob only if
that gives the same bytes (fpzip's encoder is deterministic; honest blobs always pass); the node
checks the returned size against the expected count.

Pipe protocol (little-endian): request ``uint32 count | uint32 length | blob``; reply
``uint8 status | uint32 length | body``, status 0: body = count float32 values, 1: an error text.
"""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import time

import numpy as np

from peerlearn.codecs.floats import FPZIP, FloatCodec
from peerlearn.codecs.fpzip_header import check_float32_stream
from peerlearn.codecs.message import PayloadError

_REQUEST = struct.Struct("<II")
_REPLY = struct.Struct("<BI")
_READY = b"R"


#: the child: this module's ``_serve``
COMMAND = (sys.executable, "-m", "peerlearn.deploy.decoder")


class DecoderProcess:
    """One child process decoding fpzip blobs; restarted after a crash or a timeout.

    A decode may take ``timeout_s + per_value_s * count``: generous, fpzip decodes and
    re-encodes ~10 M values/s on one core (~50 ns per value each way).
    """

    def __init__(
        self,
        *,
        timeout_s: float = 2.0,
        per_value_s: float = 2e-6,
        startup_timeout_s: float = 30.0,
        command: tuple[str, ...] = COMMAND,
    ) -> None:
        self.timeout_s, self.per_value_s = timeout_s, per_value_s
        self.startup_timeout_s = startup_timeout_s
        self.command = command
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.restarts = 0

    def start(self) -> None:
        """Start the child now (it imports numpy and fpzip: ~0.1 s), if none is running."""
        if self.proc is None:
            self.proc = subprocess.Popen(
                list(self.command),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # a crashing decoder's noise is not the node's log
            )
            self.ready = False

    def close(self) -> None:
        """Stop the child (it also exits by itself when this process's end of the pipe closes)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()

    def decode(self, blob: bytes, count: int) -> np.ndarray:
        """``count`` float32 values from ``blob``, or ``PayloadError`` (the child's fate decides
        the reason). The blob's header must already have been checked against ``count``."""
        self.start()
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        try:
            if not self.ready:
                self._read_exact(1, time.monotonic() + self.startup_timeout_s)
                self.ready = True
            self.proc.stdin.write(_REQUEST.pack(count, len(blob)) + blob)
            self.proc.stdin.flush()
            deadline = time.monotonic() + self.timeout_s + self.per_value_s * count
            status, length = _REPLY.unpack(self._read_exact(_REPLY.size, deadline))
            body = self._read_exact(length, deadline)
        except TimeoutError:
            self._restart()
            raise PayloadError("decoder_timeout", f"fpzip timed out, {count} values") from None
        except (OSError, EOFError):  # the child died: broken pipe or end of its output
            self._restart()
            raise PayloadError("decoder_crashed", f"fpzip crashed on {len(blob)} bytes") from None
        if status != 0:
            raise PayloadError("undecodable", body.decode(errors="replace"))
        if length != 4 * count:
            raise PayloadError("bad_count", f"fpzip decoded {length // 4} values, expected {count}")
        return np.frombuffer(body, dtype="<f4").astype(np.float32)

    def _restart(self) -> None:
        """Kill the child and start the next one at once, so it is ready by the next blob."""
        self.close()
        self.restarts += 1
        self.start()

    def _read_exact(self, n: int, deadline: float) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        parts, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, n - got)
            if not chunk:
                raise EOFError
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)


class SandboxedFpzip(FloatCodec):
    """The fpzip codec of a receiver: header checked here, body decoded in a ``DecoderProcess``.

    Encoding is ``codecs.floats.FPZIP``'s (own values are safe to hand to fpzip).
    """

    codec_id = FPZIP.codec_id
    name = FPZIP.name

    def __init__(self, process: DecoderProcess | None = None) -> None:
        self.process = process or DecoderProcess()

    def encode(self, values: np.ndarray) -> bytes:
        return FPZIP.encode(values)

    def count(self, buf: bytes, max_count: int) -> int:
        return FPZIP.count(buf, max_count)

    def decode(self, buf: bytes, count: int | None = None) -> np.ndarray:
        n = self.count(buf, 2**31 - 1) if count is None else count
        if not buf:
            if n:
                raise PayloadError("bad_count", f"empty fpzip blob, {n} values expected")
            return np.empty(0, dtype=np.float32)
        if check_float32_stream(buf, n) != n:
            raise PayloadError("bad_count", f"fpzip stream does not hold {n} values")
        return self.process.decode(bytes(buf), n)


def _serve() -> None:
    """The child: decode requests from stdin until it closes (the parent ended or died)."""
    import fpzip

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(_READY)
    stdout.flush()
    while True:
        head = stdin.read(_REQUEST.size)
        if len(head) < _REQUEST.size:
            return
        count, length = _REQUEST.unpack(head)
        blob = stdin.read(length)
        if len(blob) < length:
            return
        try:
            # again: never let fpzip allocate what the parent did not ask for
            if check_float32_stream(blob, count) != count:
                raise ValueError(f"stream does not hold {count} values")
            out = np.ascontiguousarray(fpzip.decompress(blob, order="C"), dtype="<f4").reshape(-1)
            # fpzip reads past a forged body and may return whatever memory held: only a blob
            # our encoder would have written for these values is accepted (it is deterministic)
            if out.size != count or bytes(fpzip.compress(out, precision=0, order="C")) != blob:
                raise ValueError("not the canonical fpzip encoding of what it decodes to")
            reply = _REPLY.pack(0, 4 * out.size) + out.tobytes()
        except Exception as exc:  # fpzip's own read errors, a header the check refuses
            text = f"{type(exc).__name__}: {exc}".encode()[:200]
            reply = _REPLY.pack(1, len(text)) + text
        stdout.write(reply)
        stdout.flush()


if __name__ == "__main__":
    _serve()
