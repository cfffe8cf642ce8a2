"""Atomic persistence of the master weights (int32 Q24 weights blob) on the board.

save(): write `<path>.tmp`, flush, close, then os.rename over `<path>` (atomic on littlefs
and POSIX). On FAT, rename onto an existing file fails: remove the target, then rename.
A crash between the two leaves only the tmp file, so load() considers both files and
returns the newest one whose CRC checks out; a corrupt file never replaces good weights.
Call save() once per round, never per step (flash wear).
"""

import os
import sys

from tfshared import weights

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_CHUNK = const(256)  # scratch for streaming CRC checks (multiple of 4)


class Store:
    """Weights file at `path` (default "weights.bin") plus its `path + ".tmp"` twin."""

    def __init__(self, path="weights.bin"):
        self.path = path
        self.tmp = path + ".tmp"
        self._scratch = bytearray(_CHUNK)

    def save(self, w, sizes, model_version, flags=0):
        """Persist Q24 master weights `w` (array('i'), SPEC layout) atomically."""
        if len(w) != weights.param_count(sizes):
            raise ValueError("store: %d weights for sizes %r" % (len(w), tuple(sizes)))
        # If only the tmp file holds good weights (crash after a FAT remove), promote it
        # before overwriting the tmp file, so there is always one good copy on flash.
        if self._check(self.path) is None and self._check(self.tmp) is not None:
            self._replace(self.tmp, self.path)
        weights.check_range_array(w)
        hdr = bytearray(weights.header_size(len(sizes)))
        n = weights.encode_header_into(hdr, sizes, weights.DTYPE_Q24, model_version, flags)
        hdr = memoryview(hdr)[:n]
        crc = weights.crc32(hdr)
        f = open(self.tmp, "wb")
        try:
            f.write(hdr)
            if sys.byteorder == "little":
                f.write(w)  # array('i') is already int32 little-endian: no second copy
                crc = weights.crc32(w, crc)
            else:  # pragma: no cover (no big-endian TinyFleet board)
                body = weights.encode(w, sizes)[n:-4]
                f.write(body)
                crc = weights.crc32(body, crc)
            f.write(crc.to_bytes(4, "little"))
            f.flush()
        finally:
            f.close()
        if hasattr(os, "sync"):
            os.sync()
        self._replace(self.tmp, self.path)

    def load(self, into=None, sizes=None):
        """Newest valid blob: its Info (with .weights = `into` or a new array) or None.

        `into` (preallocated array('i')) is only written once a file has been fully
        validated; `sizes` rejects blobs of another shape.
        """
        best = None
        best_path = None
        for path in (self.path, self.tmp):
            info = self._check(path, sizes)
            if info is not None and (best is None or info.model_version > best.model_version):
                best, best_path = info, path
        if best is None:
            return None
        if into is None:
            into = weights.zeros(best.n_params)
        elif len(into) != best.n_params:
            return None
        f = open(best_path, "rb")
        try:
            f.seek(best.header_len)
            if sys.byteorder == "little":
                got = f.readinto(into)
            else:  # pragma: no cover
                f.seek(0)
                weights.decode_into(f.read(), into)
                got = 4 * best.n_params
        finally:
            f.close()
        if got != 4 * best.n_params:  # the file changed under us
            return None
        best.weights = into
        best.path = best_path
        return best

    def _check(self, path, sizes=None):
        """Info of a fully valid Q24 blob at path (CRC, length, range), else None."""
        buf = self._scratch
        try:
            f = open(path, "rb")
        except OSError:
            return None
        try:
            n = f.readinto(buf)
            try:
                info = weights.parse_header(memoryview(buf)[:n], sizes, weights.DTYPE_Q24)
            except ValueError:
                return None
            f.seek(0)
            crc = 0
            left = info.header_len
            while left:  # header (it fits in the scratch buffer: <= 17 + 32 bytes)
                k = f.readinto(memoryview(buf)[:left])
                if not k:
                    return None
                crc = weights.crc32(memoryview(buf)[:k], crc)
                left -= k
            left = info.payload_len
            done = 0
            while left:
                k = f.readinto(memoryview(buf)[:min(left, _CHUNK)])
                if not k or k & 3:
                    return None
                try:
                    weights.check_range_q24(buf, 0, k >> 2)
                except ValueError:
                    return None
                crc = weights.crc32(memoryview(buf)[:k], crc)
                left -= k
                done += k
            tail = f.read(5)
            if len(tail) != 4 or int.from_bytes(tail, "little") != crc:
                return None
            return info
        except OSError:
            return None
        finally:
            f.close()

    def _replace(self, src, dst):
        replace(src, dst)


def replace(src, dst):
    """Rename `src` over `dst`: atomic on littlefs and the unix port. On FAT a rename onto
    an existing file fails, so remove the target first (load() then finds the tmp twin)."""
    try:
        os.rename(src, dst)
    except OSError:  # FAT: the target exists
        try:
            os.remove(dst)
        except OSError:
            pass
        os.rename(src, dst)
