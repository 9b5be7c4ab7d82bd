"""Drop graylisted source addresses in the kernel (Linux classic BPF on the node's UDP socket).

Once an address is graylisted for flooding, reading its datagrams only to throw them away still
costs the node a system call and a trip through the event loop each — at hundreds of thousands
per second that is a whole core, and the status API starves. A socket filter makes the kernel
discard them before they are queued, so a graylisted flooder costs the node nothing.

The user-space check in the core stays: this is an optimisation, used where available (Linux,
IPv4 sockets) and skipped silently elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import struct
import sys
from asyncio.trsock import TransportSocket

#: Most addresses one filter holds: conditional jumps in classic BPF reach at most 255
#: instructions ahead, and each address takes 4.
MAX_FILTERED = 60

_SO_ATTACH_FILTER = 26
_SO_DETACH_FILTER = 27
_SKF_NET_OFF = -0x100000  # negative offsets address the IP header (linux/filter.h)
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_LD_H_ABS = 0x28  # BPF_LD | BPF_H | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K


class _SockFprog(ctypes.Structure):
    """``struct sock_fprog`` (linux/filter.h): instruction count and pointer."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def drop_filter(addrs: list[tuple[str, int]]) -> list[tuple[int, int, int, int]]:
    """Classic BPF program (code, jt, jf, k) that drops datagrams from ``addrs`` (IPv4, port).

    For a UDP socket the filter sees the packet at the UDP header (offset 0 = source port);
    the IPv4 source address is at ``SKF_NET_OFF + 12``.
    """
    addrs = addrs[:MAX_FILTERED]
    prog: list[tuple[int, int, int, int]] = []
    n = len(addrs)
    for i, (host, port) in enumerate(addrs):
        ip = struct.unpack("!I", socket.inet_aton(host))[0]
        to_drop = 4 * (n - i - 1) + 1  # from the port test: skip later entries and the accept
        prog += [
            (_LD_W_ABS, 0, 0, (_SKF_NET_OFF + 12) & 0xFFFFFFFF),
            (_JEQ_K, 0, 2, ip),  # other source address: on to the next entry
            (_LD_H_ABS, 0, 0, 0),
            (_JEQ_K, to_drop, 0, port),
        ]
    prog += [(_RET_K, 0, 0, 0xFFFFFFFF), (_RET_K, 0, 0, 0)]  # accept whole packet | drop
    return prog


def set_drop_filter(sock: socket.socket | TransportSocket, addrs: list[tuple[str, int]]) -> bool:
    """Install (or replace, atomically) the kernel drop list; False where unsupported."""
    if not sys.platform.startswith("linux") or sock.family != socket.AF_INET:
        return False
    if not addrs:
        with contextlib.suppress(OSError):  # no filter attached: nothing to remove
            sock.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)
        return True
    prog = drop_filter(addrs)
    buf = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *ins) for ins in prog))
    fprog = bytes(_SockFprog(len(prog), ctypes.addressof(buf)))  # the kernel copies both now
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True
