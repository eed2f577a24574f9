"""pytest plugin for the mipsel root only: undo a QEMU user-mode bug the agent would never see on a box.

qemu-mipsel 7.2 (Debian 12) passes getsockopt(SOL_SOCKET, SO_ERROR) through untranslated, so an
emulated MIPS program reads the HOST's errno: 111 for a refused non-blocking connect, where a real
MIPS kernel says 146 (MIPS numbers its errnos differently; errno.ECONNREFUSED is 146 in the root's
python). Measured: connect() itself returns 146 under the same qemu; only SO_ERROR leaks 111.
This maps the host (x86-64) numbers of the errors a connect can end with back to the target's, as the
MIPS kernel would, for every socket.socket in the process. Loaded only when platform.machine() is mips.
"""

import errno
import platform
import socket

# x86-64 (asm-generic) numbers -> names
HOST_ERRNO = {
    98: "EADDRINUSE", 99: "EADDRNOTAVAIL", 100: "ENETDOWN", 101: "ENETUNREACH", 103: "ECONNABORTED",
    104: "ECONNRESET", 110: "ETIMEDOUT", 111: "ECONNREFUSED", 112: "EHOSTDOWN", 113: "EHOSTUNREACH",
    114: "EALREADY", 115: "EINPROGRESS",
}
_real_getsockopt = socket.socket.getsockopt


def _getsockopt(self, level, optname, *args):
    value = _real_getsockopt(self, level, optname, *args)
    if level == socket.SOL_SOCKET and optname == socket.SO_ERROR and not args and value in HOST_ERRNO:
        return getattr(errno, HOST_ERRNO[value])
    return value


if platform.machine() == "mips":
    socket.socket.getsockopt = _getsockopt
