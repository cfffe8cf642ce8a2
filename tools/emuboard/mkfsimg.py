# Build a LittleFS2 image for the MPS2_AN385_TOOLING RAM disk (2 MiB, 512-byte blocks,
# as in the board's frozen _boot.py), using the MicroPython unix port:
#   micropython mkfsimg.py OUT.img HOSTFILE[:DEST] ... [@fill:DEST:BYTES] ...
# `@fill:DEST:BYTES` adds a file of BYTES zero bytes (e.g. to fill the filesystem).
# Preload it with `emulate start`'s fs_image (qemu -device loader,addr=0x20000000).
import sys

import vfs

SIZE, BS = 2 * 1024 * 1024, 512


class Dev:
    def __init__(self):
        self.mv = memoryview(bytearray(SIZE))

    def readblocks(self, n, buf, off=0):
        a = n * BS + off
        buf[:] = self.mv[a : a + len(buf)]

    def writeblocks(self, n, buf, off=0):
        a = n * BS + off
        self.mv[a : a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return SIZE // BS
        if op == 5:
            return BS
        if op == 6:
            return 0


def mkdirs(fs, dst):
    parts = dst.split("/")[:-1]
    for i in range(len(parts)):
        try:
            fs.mkdir("/".join(parts[: i + 1]))
        except OSError:
            pass


d = Dev()
vfs.VfsLfs2.mkfs(d)
fs = vfs.VfsLfs2(d)
for spec in sys.argv[2:]:
    if spec.startswith("@fill:"):
        _, dst, n = spec.split(":")
        mkdirs(fs, dst)
        chunk = bytearray(4096)
        n = int(n)
        with fs.open(dst, "wb") as g:
            while n > 0:
                g.write(memoryview(chunk)[: min(n, 4096)])
                n -= 4096
    else:
        src, _, dst = spec.partition(":")
        dst = dst or src.split("/")[-1]
        mkdirs(fs, dst)
        with open(src, "rb") as f, fs.open(dst, "wb") as g:
            g.write(f.read())
    print("added", dst)
s = fs.statvfs("/")
print("free", s[0] * s[3])
with open(sys.argv[1], "wb") as f:
    f.write(d.mv)
