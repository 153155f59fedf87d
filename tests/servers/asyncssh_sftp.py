"""An asyncssh SFTP server for the interop tests (python3-asyncssh).

asyncssh hands out file handles as 4-byte big-endian counters: past 127
open files a handle holds bytes >= 0x80, which is not UTF-8. Serves ROOT
(chrooted) on 127.0.0.1, port 0 unless given; prints the port once it listens.

usage: asyncssh_sftp.py ROOT HOST_KEY AUTHORIZED_KEYS [PORT]
"""

import asyncio
import sys

import asyncssh


async def main() -> None:
    root, host_key, authorized = sys.argv[1:4]
    port = int(sys.argv[4]) if len(sys.argv) > 4 else 0

    class Chrooted(asyncssh.SFTPServer):
        def __init__(self, chan):
            super().__init__(chan, chroot=root)

    server = await asyncssh.listen(
        "127.0.0.1",
        port,
        server_host_keys=[host_key],
        authorized_client_keys=authorized,
        sftp_factory=Chrooted,
        allow_scp=False,
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
