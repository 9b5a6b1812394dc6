//! Unit and property tests of request decoding, reply encoding and errno mapping.

use super::handshake::ExportInfo;
use super::proto::{self, cflags, cmd, Errno};
use super::reply::{self, Extent, ReplyMode};
use super::request::{encode_request, Command, RequestDecoder, RequestError};
use proptest::prelude::*;

fn export(name: &str, size: u64, ro: bool) -> ExportInfo {
    ExportInfo {
        name: name.to_string(),
        description: String::new(),
        size,
        read_only: ro,
        min_block: 1,
        preferred_block: 4096,
        max_payload: 32 << 20,
        rotational: false,
        multi_conn: true,
    }
}

// ---- requests ----

fn dec(mode: ReplyMode) -> RequestDecoder {
    let e = export("p/v", 1 << 20, false);
    RequestDecoder {
        mode,
        size: e.size,
        flags: e.transmission_flags(mode.structured()),
        min_block: 1,
        max_payload: 64 * 1024,
        max_discard: 256 * 1024,
        base_allocation: if mode.structured() { Some(1) } else { None },
    }
}

fn decode(
    d: &RequestDecoder,
    flags: u16,
    kind: u16,
    offset: u64,
    len: u64,
) -> Result<super::Request, RequestError> {
    d.decode(&encode_request(
        d.mode == ReplyMode::Extended,
        flags,
        kind,
        7,
        offset,
        len,
    ))
}

fn errno(d: &RequestDecoder, flags: u16, kind: u16, offset: u64, len: u64) -> Option<Errno> {
    decode(d, flags, kind, offset, len)
        .unwrap()
        .command
        .err()
        .map(|r| r.errno)
}

#[test]
fn valid_requests_decode() {
    for mode in [
        ReplyMode::Simple,
        ReplyMode::Structured,
        ReplyMode::Extended,
    ] {
        let d = dec(mode);
        let r = decode(&d, 0, cmd::READ, 4096, 512).unwrap();
        assert_eq!(r.cookie, 7);
        assert_eq!(r.payload_len, 0);
        assert_eq!(
            r.command,
            Ok(Command::Read {
                offset: 4096,
                length: 512,
                df: false
            })
        );
        let r = decode(&d, cflags::FUA, cmd::WRITE, 0, 1000).unwrap();
        assert_eq!(r.payload_len, 1000);
        assert_eq!(
            r.command,
            Ok(Command::Write {
                offset: 0,
                length: 1000,
                fua: true
            })
        );
        assert_eq!(
            decode(&d, 0, cmd::FLUSH, 0, 0).unwrap().command,
            Ok(Command::Flush)
        );
        assert_eq!(
            decode(&d, 0, cmd::DISC, 0, 0).unwrap().command,
            Ok(Command::Disconnect)
        );
        assert_eq!(
            decode(&d, 0, cmd::TRIM, 0, 1 << 20).unwrap().command,
            Ok(Command::Trim {
                offset: 0,
                length: 1 << 20,
                fua: false
            })
        );
        assert_eq!(
            decode(
                &d,
                cflags::NO_HOLE | cflags::FAST_ZERO,
                cmd::WRITE_ZEROES,
                512,
                512
            )
            .unwrap()
            .command,
            Ok(Command::WriteZeroes {
                offset: 512,
                length: 512,
                fua: false,
                may_trim: false,
                fast_only: true
            })
        );
        assert_eq!(
            decode(&d, 0, cmd::CACHE, 0, 4096).unwrap().command,
            Ok(Command::Cache {
                offset: 0,
                length: 4096
            })
        );
        // Zero-length requests are harmless.
        assert_eq!(
            decode(&d, 0, cmd::READ, 1 << 20, 0).unwrap().command,
            Ok(Command::Read {
                offset: 1 << 20,
                length: 0,
                df: false
            })
        );
    }
    let d = dec(ReplyMode::Structured);
    assert_eq!(
        decode(&d, cflags::REQ_ONE, cmd::BLOCK_STATUS, 0, 4096)
            .unwrap()
            .command,
        Ok(Command::BlockStatus {
            offset: 0,
            length: 4096,
            req_one: true,
            context: 1
        })
    );
    assert_eq!(
        decode(&d, cflags::DF, cmd::READ, 0, 1).unwrap().command,
        Ok(Command::Read {
            offset: 0,
            length: 1,
            df: true
        })
    );
    let x = dec(ReplyMode::Extended);
    assert_eq!(
        decode(&x, cflags::PAYLOAD_LEN, cmd::WRITE, 0, 10)
            .unwrap()
            .payload_len,
        10
    );
}

#[test]
fn bad_requests_get_the_right_errno() {
    let s = dec(ReplyMode::Simple);
    assert_eq!(
        errno(&s, 0, 42, 0, 0),
        Some(Errno::Inval),
        "unknown command"
    );
    assert_eq!(
        errno(&s, 0, cmd::RESIZE, 0, 0),
        Some(Errno::Inval),
        "resize not advertised"
    );
    assert_eq!(
        errno(&s, 0x8000, cmd::READ, 0, 1),
        Some(Errno::Inval),
        "unknown flag"
    );
    assert_eq!(
        errno(&s, cflags::DF, cmd::READ, 0, 1),
        Some(Errno::Inval),
        "DF without structured replies"
    );
    assert_eq!(
        errno(&s, cflags::NO_HOLE, cmd::WRITE, 0, 1),
        Some(Errno::Inval),
        "inapplicable flag"
    );
    assert_eq!(
        errno(&s, 0, cmd::READ, 1 << 20, 1),
        Some(Errno::Inval),
        "read past end"
    );
    assert_eq!(
        errno(&s, 0, cmd::READ, (1 << 20) - 1, 8192),
        Some(Errno::Inval),
        "read straddling end"
    );
    assert_eq!(
        errno(&s, 0, cmd::READ, u64::MAX, 2),
        Some(Errno::Inval),
        "offset overflow"
    );
    assert_eq!(
        errno(&s, 0, cmd::WRITE, 1 << 20, 4096),
        Some(Errno::NoSpc),
        "write past end"
    );
    assert_eq!(
        errno(&s, 0, cmd::WRITE_ZEROES, 1 << 20, 4096),
        Some(Errno::NoSpc),
        "zero past end"
    );
    assert_eq!(
        errno(&s, 0, cmd::TRIM, 1 << 20, 4096),
        Some(Errno::Inval),
        "trim past end"
    );
    assert_eq!(
        errno(&s, 0, cmd::CACHE, 1 << 20, 4096),
        Some(Errno::Inval),
        "cache past end"
    );
    assert_eq!(
        errno(&s, 0, cmd::READ, 0, 128 * 1024),
        Some(Errno::Inval),
        "read above max payload"
    );
    assert_eq!(
        errno(&s, 0, cmd::BLOCK_STATUS, 0, 4096),
        Some(Errno::Inval),
        "no meta context"
    );
    // A rejected write still has its payload consumed.
    let r = decode(&s, 0, cmd::WRITE, 1 << 20, 4096).unwrap();
    assert_eq!(r.payload_len, 4096);
    let r = decode(&s, 0, cmd::WRITE, 0, 128 * 1024).unwrap();
    assert_eq!(
        (r.payload_len, r.command.unwrap_err().errno),
        (128 * 1024, Errno::Inval)
    );
    assert_eq!(
        decode(&s, 0, cmd::WRITE, 0, 300 * 1024),
        Err(RequestError::PayloadTooLarge(300 * 1024))
    );
    let x = dec(ReplyMode::Extended);
    assert_eq!(
        decode(&x, 0, cmd::WRITE, 0, 65 * 1024),
        Err(RequestError::PayloadTooLarge(65 * 1024))
    );
    let r = decode(&x, cflags::PAYLOAD_LEN, cmd::BLOCK_STATUS, 0, 16).unwrap();
    assert_eq!(
        (r.payload_len, r.command.unwrap_err().errno),
        (16, Errno::Inval)
    );
    assert_eq!(
        errno(&x, 0, cmd::TRIM, 0, u64::MAX),
        Some(Errno::Inval),
        "64-bit length past end"
    );
    // Bad magic is fatal.
    let mut h = encode_request(false, 0, cmd::READ, 1, 0, 1);
    h[0] = 0;
    assert!(matches!(s.decode(&h), Err(RequestError::BadMagic(_))));
    assert!(matches!(
        x.decode(&encode_request(false, 0, 0, 0, 0, 0)),
        Err(RequestError::BadHeaderLength(28))
    ));
    let mut h = encode_request(true, 0, cmd::READ, 1, 0, 1);
    h[3] ^= 0xff;
    assert!(matches!(x.decode(&h), Err(RequestError::BadMagic(_))));
}

#[test]
fn read_only_and_alignment() {
    let mut d = dec(ReplyMode::Structured);
    d.flags = export("p/v", 1 << 20, true).transmission_flags(true);
    let r = decode(&d, 0, cmd::WRITE, 0, 4096).unwrap();
    assert_eq!(
        (r.payload_len, r.command.unwrap_err().errno),
        (4096, Errno::Perm)
    );
    assert_eq!(errno(&d, 0, cmd::TRIM, 0, 4096), Some(Errno::Perm));
    assert_eq!(errno(&d, 0, cmd::WRITE_ZEROES, 0, 4096), Some(Errno::Perm));
    assert_eq!(errno(&d, 0, cmd::READ, 0, 4096), None);
    let mut d = dec(ReplyMode::Structured);
    d.min_block = 512;
    assert_eq!(errno(&d, 0, cmd::READ, 1, 511), Some(Errno::Inval));
    assert_eq!(errno(&d, 0, cmd::WRITE, 512, 100), Some(Errno::Inval));
    assert_eq!(errno(&d, 0, cmd::TRIM, 100, 512), Some(Errno::Inval));
    assert_eq!(errno(&d, 0, cmd::READ, 512, 1024), None);
}

#[test]
fn errno_mapping() {
    assert_eq!(Errno::from_os(libc::EDQUOT), Errno::NoSpc);
    assert_eq!(Errno::from_os(libc::EFBIG), Errno::NoSpc);
    assert_eq!(Errno::from_os(libc::EROFS), Errno::Perm);
    assert_eq!(Errno::from_os(libc::ENOTSUP), Errno::NotSup);
    assert_eq!(Errno::from_os(libc::EIO), Errno::Io);
    assert_eq!(Errno::from_os(libc::EBADMSG), Errno::Io);
    for e in [
        Errno::Perm,
        Errno::Io,
        Errno::NoMem,
        Errno::Inval,
        Errno::NoSpc,
        Errno::Overflow,
        Errno::NotSup,
        Errno::Shutdown,
    ] {
        assert_eq!(Errno::from_code(e.code()), e);
        assert_eq!(Errno::from_os(i32::try_from(e.code()).unwrap()), e);
    }
    assert_eq!(Errno::from_code(4242), Errno::Inval);
}

// ---- replies ----

#[test]
fn reply_encodings() {
    let mut v = Vec::new();
    reply::success(&mut v, ReplyMode::Simple, 0x1122, 0);
    assert_eq!(
        v,
        [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11, 0x22]
    );
    v.clear();
    reply::error(&mut v, ReplyMode::Simple, 5, 0, Errno::NoSpc, "ignored");
    assert_eq!(&v[4..8], &28u32.to_be_bytes());
    assert_eq!(v.len(), 16);
    v.clear();
    reply::error(&mut v, ReplyMode::Structured, 5, 0, Errno::Inval, "bad");
    assert_eq!(&v[0..4], &proto::STRUCTURED_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&v[4..6], &1u16.to_be_bytes());
    assert_eq!(&v[6..8], &proto::chunk::ERROR.to_be_bytes());
    assert_eq!(&v[16..20], &9u32.to_be_bytes());
    assert_eq!(&v[20..24], &22u32.to_be_bytes());
    assert_eq!(&v[24..26], &3u16.to_be_bytes());
    assert_eq!(&v[26..], b"bad");
    v.clear();
    reply::success(&mut v, ReplyMode::Extended, 9, 4096);
    assert_eq!(v.len(), 32);
    assert_eq!(&v[0..4], &proto::EXT_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&v[6..8], &proto::chunk::NONE.to_be_bytes());
    assert_eq!(&v[16..24], &4096u64.to_be_bytes());
    let mut h = [0u8; reply::MAX_READ_PREFIX];
    assert_eq!(
        reply::read_data_header(&mut h, ReplyMode::Structured, 3, 100, 100, 512, true),
        28
    );
    assert_eq!(&h[16..20], &520u32.to_be_bytes());
    assert_eq!(&h[20..28], &100u64.to_be_bytes());
    assert_eq!(
        reply::read_data_header(&mut h, ReplyMode::Extended, 3, 100, 100, 512, true),
        40
    );
    assert_eq!(&h[24..32], &520u64.to_be_bytes());
    assert_eq!(&h[32..40], &100u64.to_be_bytes());
    assert_eq!(
        reply::read_data_header(&mut h[..10], ReplyMode::Simple, 3, 0, 0, 0, true),
        0
    );
    v.clear();
    reply::error_offset(
        &mut v,
        ReplyMode::Structured,
        3,
        0,
        Errno::Io,
        "bad sector",
        12345,
        false,
    );
    assert_eq!(&v[4..6], &0u16.to_be_bytes());
    assert_eq!(&v[6..8], &proto::chunk::ERROR_OFFSET.to_be_bytes());
    assert_eq!(&v[16..20], &(14u32 + 10).to_be_bytes());
    assert_eq!(&v[20..24], &5u32.to_be_bytes());
    assert_eq!(&v[24..26], &10u16.to_be_bytes());
    assert_eq!(&v[26..36], b"bad sector");
    assert_eq!(&v[36..44], &12345u64.to_be_bytes());
    v.clear();
    reply::none_done(&mut v, ReplyMode::Structured, 3, 0);
    assert_eq!(
        (v.len(), &v[4..6], &v[6..8]),
        (20, &1u16.to_be_bytes()[..], &0u16.to_be_bytes()[..])
    );
    v.clear();
    reply::hole_chunk(&mut v, ReplyMode::Structured, 3, 0, 8192, 4096, false);
    assert_eq!(v.len(), 32);
    assert_eq!(&v[4..6], &0u16.to_be_bytes());
    assert_eq!(&v[20..28], &8192u64.to_be_bytes());
    assert_eq!(&v[28..32], &4096u32.to_be_bytes());
    v.clear();
    let ext = [
        Extent {
            length: 4096,
            flags: 3,
        },
        Extent {
            length: 1 << 33,
            flags: 0,
        },
        Extent {
            length: 1,
            flags: 0,
        },
    ];
    assert_eq!(
        reply::block_status(&mut v, ReplyMode::Structured, 3, 0, 1, &ext, true),
        2
    );
    assert_eq!(v.len(), 20 + 4 + 16);
    assert_eq!(&v[28..32], &3u32.to_be_bytes());
    assert_eq!(
        u32::from_be_bytes(v[32..36].try_into().unwrap()),
        0xffff_0000
    );
    v.clear();
    assert_eq!(
        reply::block_status(&mut v, ReplyMode::Extended, 3, 0, 1, &ext, true),
        3
    );
    assert_eq!(v.len(), 32 + 8 + 48);
    assert_eq!(&v[6..8], &proto::chunk::BLOCK_STATUS_EXT.to_be_bytes());
    assert_eq!(&v[56..64], &(1u64 << 33).to_be_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn request_decoder_never_panics(
        raw in prop::collection::vec(any::<u8>(), 28..=32),
        magic_ok in any::<bool>(),
        mode in 0u8..3,
        min_shift in 0u32..13,
        size in any::<u64>(),
        ro in any::<bool>(),
    ) {
        let mode = [ReplyMode::Simple, ReplyMode::Structured, ReplyMode::Extended][usize::from(mode)];
        let e = ExportInfo { size, read_only: ro, ..export("x", 0, ro) };
        let d = RequestDecoder {
            mode, size, flags: e.transmission_flags(mode.structured()), min_block: 1 << min_shift,
            max_payload: 1 << 20, max_discard: 4 << 20, base_allocation: mode.structured().then_some(1),
        };
        let mut h = raw;
        h.truncate(d.header_len());
        if h.len() < d.header_len() { h.resize(d.header_len(), 0); }
        if magic_ok {
            let m = if mode == ReplyMode::Extended { proto::EXT_REQUEST_MAGIC } else { proto::REQUEST_MAGIC };
            h[0..4].copy_from_slice(&m.to_be_bytes());
            h[6] = 0; // mostly known commands
            h[7] %= 9;
        }
        match d.decode(&h) {
            Err(RequestError::PayloadTooLarge(n)) => prop_assert!(n > u64::from(d.max_payload)),
            Err(_) => {}
            Ok(r) => {
                prop_assert!(r.payload_len <= d.max_discard);
                let mask = u64::from(d.min_block) - 1;
                let check = |off: u64, len: u64| off & mask == 0 && len & mask == 0 && off.checked_add(len).is_some_and(|e| e <= size);
                match r.command {
                    Ok(Command::Read { offset, length, .. }) => {
                        prop_assert!(check(offset, u64::from(length)));
                        prop_assert!(length <= d.max_payload);
                        prop_assert_eq!(r.payload_len, 0);
                    }
                    Ok(Command::Write { offset, length, .. }) => {
                        prop_assert!(!ro && check(offset, u64::from(length)));
                        prop_assert_eq!(r.payload_len, u64::from(length));
                    }
                    Ok(Command::Trim { offset, length, .. }) | Ok(Command::WriteZeroes { offset, length, .. }) => {
                        prop_assert!(!ro && check(offset, length));
                    }
                    Ok(Command::Cache { offset, length }) => prop_assert!(check(offset, length)),
                    Ok(Command::BlockStatus { offset, length, .. }) => prop_assert!(check(offset, length) && length > 0 && mode.structured()),
                    Ok(Command::Flush) | Ok(Command::Disconnect) | Err(_) => {}
                }
            }
        }
    }
}
