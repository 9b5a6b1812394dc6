# Option and transmission edge cases driven through libnbd's Python binding (nbdsh's module).
# Usage: python3 options.py URI EXPORT SIZE      (exits non-zero with a traceback on failure)
import sys
import nbd

uri, export, size = sys.argv[1], sys.argv[2], int(sys.argv[3])


def opt_handle():
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(uri)
    return h


# NBD_OPT_LIST: our export with its description, then ACK.
h = opt_handle()
names = []
h.opt_list(lambda name, desc: names.append((name, desc)) or 0)
assert any(n == export and d.startswith("in-memory") for n, d in names), names
# NBD_OPT_INFO of an unknown export fails cleanly and the session goes on.
h.set_export_name("no/such/export")
try:
    h.opt_info()
    raise AssertionError("INFO of an unknown export succeeded")
except nbd.Error:
    pass
h.set_export_name(export)
h.opt_info()
assert h.get_size() == size, h.get_size()
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
# LIST_META_CONTEXT with the "base:" wildcard.
ctx = []
h.add_meta_context("base:")
h.opt_list_meta_context(lambda name: ctx.append(name) or 0)
assert ctx == ["base:allocation"], ctx
h.opt_abort()

# Structured replies refused by the client: simple replies, no block status, no DF.
h = nbd.NBD()
h.set_request_structured_replies(False)
h.add_meta_context("base:allocation")
h.connect_uri(uri)
assert not h.get_structured_replies_negotiated()
assert not h.can_meta_context("base:allocation")
assert not h.can_df()
h.pwrite(b"s" * 4096, 1 << 20)
assert h.pread(4096, 1 << 20) == b"s" * 4096
assert h.pread(4096, 2 << 20) == bytes(4096)
h.shutdown()

# Structured replies with base:allocation.
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(uri)
assert h.get_structured_replies_negotiated()
assert h.can_meta_context("base:allocation")
assert h.can_df() and h.can_multi_conn() and h.can_fast_zero() and h.can_cache()
h.trim(4 << 20, 0)
h.pwrite(b"a" * 65536, 0)
entries = []


def bs_cb(meta, off, e, err):
    entries.append((meta, off, list(e)))
    return 0


h.block_status(1 << 20, 0, bs_cb, nbd.CMD_FLAG_REQ_ONE)
assert entries == [("base:allocation", 0, [65536, 0])], entries
entries.clear()
h.block_status(1 << 20, 0, bs_cb)
assert entries == [("base:allocation", 0, [65536, 0, (1 << 20) - 65536, 3])], entries

# A small read across data and a hole comes back as a data chunk and a hole chunk.
chunks = []


def chunk_cb(sub, off, status, err):
    chunks.append((off, len(sub), status, bytes(sub)))
    return 0


buf = h.pread_structured(8192, 61440, chunk_cb)
assert buf == b"a" * 4096 + bytes(4096), buf[:16]
assert sorted((o, n, s) for o, n, s, _ in chunks) == [(61440, 4096, nbd.READ_DATA), (65536, 4096, nbd.READ_HOLE)], chunks
# With DF it is one chunk.
chunks.clear()
buf = h.pread_structured(8192, 61440, chunk_cb, nbd.CMD_FLAG_DF)
assert len(chunks) == 1 and chunks[0][2] == nbd.READ_DATA, chunks
assert buf == b"a" * 4096 + bytes(4096)
# A whole-hole read is a single hole chunk, even when large.
chunks.clear()
buf = h.pread_structured(1 << 20, 2 << 20, chunk_cb)
assert [(o, n, s) for o, n, s, _ in chunks] == [(2 << 20, 1 << 20, nbd.READ_HOLE)], chunks
assert buf == bytes(1 << 20)
# FAST_ZERO and NO_HOLE zeroing.
h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(65536, 0) == bytes(65536)
h.zero(4096, 8192, nbd.CMD_FLAG_NO_HOLE)
entries.clear()
h.block_status(16384, 0, bs_cb)
assert entries == [("base:allocation", 0, [8192, 3, 4096, 0, 4096, 3])], entries
h.cache(65536, 0)
# Errors the server must return, with the connection kept (client-side checks off).
h.set_strict_mode(0)
for what, fn, err in [
    ("read past end", lambda: h.pread(4096, size), "EINVAL"),
    ("write past end", lambda: h.pwrite(b"x" * 4096, size - 2048), "ENOSPC"),
    ("zero past end", lambda: h.zero(8192, size - 4096), "ENOSPC"),
    ("trim past end", lambda: h.trim(8192, size - 4096), "EINVAL"),
    ("block status past end", lambda: h.block_status(8192, size, bs_cb), "EINVAL"),
]:
    try:
        fn()
        raise AssertionError(what + " succeeded")
    except nbd.Error as e:
        assert e.errno == err, (what, e.errno, e)
assert h.pread(4096, 0) == bytes(4096)
h.flush()
h.shutdown()
print("options.py: ok")
