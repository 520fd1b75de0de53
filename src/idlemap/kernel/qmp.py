"""QEMU's machine protocol (QMP) over a unix socket, and decoders for the
human-monitor text we ask it for.

Not a kernel interface, but the same kind of layer: it reads and decodes,
decides nothing and prints nothing.  Three questions give a QEMU guest's
RAM layout exactly (checked against QEMU 7.2):

* ``query-memdev``: every memory backend (id, size), including the
  implicit ``pc.ram`` that ``-m`` creates;
* HMP ``info mtree -f``: the flattened guest-physical address space, each
  range naming the memory region (backend) and the offset into it;
* HMP ``gpa2hva ADDR``: the host virtual address of a guest-physical one.
  (``info ramblock`` has no HVA column in 7.2, so it is not used.)

A QMP server socket serves one client at a time: if libvirt (or anyone)
holds it, QEMU never greets us, which we report instead of hanging.
"""
from __future__ import annotations

import json
import re
import socket
import struct
from dataclasses import dataclass

from ..errors import BadInput

GREETING_TIMEOUT_S = 10.0


class QmpError(BadInput):
    """QEMU answered a command with an error."""


class QmpClient:
    """A minimal synchronous QMP client.

    >>> with QmpClient("/run/vm1.qmp") as q:
    ...     q.execute("query-memdev")
    ...     q.hmp("info mtree -f")
    """

    def __init__(self, path: str, timeout_s: float = GREETING_TIMEOUT_S):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise BadInput(f"cannot connect to the QMP socket {path} ({e.strerror or e})") from None
        self._file = self._sock.makefile("rwb")
        try:
            greeting = self._read()
        except (socket.timeout, TimeoutError):
            self.close()
            raise BadInput(f"no QMP greeting on {path} within {timeout_s:g} s "
                           "(another client, e.g. libvirt, may hold the monitor)") from None
        if "QMP" not in greeting:
            self.close()
            raise BadInput(f"{path} is not a QMP socket (it did not greet with QMP)")
        self.version = greeting["QMP"].get("version", {}).get("qemu", {})
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            line = self._file.readline()
            if not line:
                raise BadInput(f"QEMU closed the QMP socket {self.path}")
            try:
                msg = json.loads(line)
            except ValueError:
                raise BadInput(f"{self.path} sent something that is not QMP JSON") from None
            # Asynchronous events (STOP, RESUME, ...) may come at any time.
            if "event" not in msg:
                return msg

    def execute(self, command: str, **arguments):
        msg: dict = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._file.write(json.dumps(msg).encode() + b"\n")
            self._file.flush()
            reply = self._read()
        except (socket.timeout, TimeoutError):
            raise BadInput(f"QEMU did not answer {command!r} on {self.path} in time") from None
        except OSError as e:
            raise BadInput(f"the QMP socket {self.path} failed ({e.strerror or e})") from None
        if "error" in reply:
            raise QmpError(f"QEMU refused {command!r}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command through QMP; returns its text."""
        return self.execute("human-monitor-command", **{"command-line": command_line})

    def peer_pid(self) -> int:
        """PID of the process that listens on the socket (SO_PEERCRED)."""
        raw = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", raw)[0]

    def close(self) -> None:
        try:
            self._file.close()
        except Exception:
            pass
        self._sock.close()

    def __enter__(self) -> "QmpClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class FlatRange:
    """One range of a flattened address space (``info mtree -f``)."""
    start: int               # first guest-physical byte
    end: int                 # last byte + 1
    kind: str                # ram, rom, romd, ramd, i/o
    region: str              # memory region name (a backend id for guest RAM)
    offset: int              # offset of ``start`` inside the region


_RANGE = re.compile(r"^\s+([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, ([^)]+)\): (\S+)(?: @([0-9a-f]+))?")
_AS = re.compile(r'^\s*AS "([^"]*)"')


def parse_mtree_flat(text: str, address_space: str = "memory") -> list[FlatRange]:
    """Ranges of the flat view that serves ``address_space`` ("memory" is
    the CPUs' system memory), in address order."""
    out: list[FlatRange] = []
    in_view = False
    for line in text.splitlines():
        if line.startswith("FlatView #"):
            if out:
                break               # the wanted view has been read
            in_view = False
            continue
        m = _AS.match(line)
        if m:
            in_view = in_view or m.group(1) == address_space
            continue
        if not in_view:
            continue
        m = _RANGE.match(line)
        if m:
            lo, hi = int(m.group(1), 16), int(m.group(2), 16) + 1
            out.append(FlatRange(lo, hi, m.group(3), m.group(4), int(m.group(5) or "0", 16)))
    return out


_GPA2HVA = re.compile(r"is (0x[0-9a-fA-F]+)")


def parse_gpa2hva(text: str) -> int | None:
    """HVA from the answer of HMP ``gpa2hva``; None where nothing is mapped."""
    m = _GPA2HVA.search(text)
    return int(m.group(1), 16) if m else None
