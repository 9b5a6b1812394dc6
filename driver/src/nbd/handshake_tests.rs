//! Unit and property tests of the sans-IO handshake.

use super::handshake::{
    ExportCatalog, ExportInfo, Handshake, HandshakeConfig, HandshakeError, Negotiated, Step,
    TlsPolicy,
};
use super::proto::{self, info, opt, rep, tflags};
use super::reply::ReplyMode;
use proptest::prelude::*;

#[derive(Debug, Default)]
struct Cat {
    exports: Vec<ExportInfo>,
    shutting: bool,
}

fn export(name: &str, size: u64, ro: bool) -> ExportInfo {
    ExportInfo {
        name: name.to_string(),
        description: format!("volume {name}"),
        size,
        read_only: ro,
        min_block: 1,
        preferred_block: 4096,
        max_payload: 32 << 20,
        rotational: false,
        multi_conn: true,
    }
}

impl ExportCatalog for Cat {
    type Export = String;
    fn lookup(&self, name: &str) -> Option<(ExportInfo, String)> {
        let e = if name.is_empty() && self.exports.len() == 1 {
            self.exports.first()
        } else {
            self.exports.iter().find(|e| e.name == name)
        }?;
        Some((e.clone(), e.name.clone()))
    }
    fn list(&self) -> Vec<(String, String)> {
        self.exports
            .iter()
            .map(|e| (e.name.clone(), e.description.clone()))
            .collect()
    }
    fn shutting_down(&self) -> bool {
        self.shutting
    }
}

fn cat() -> Cat {
    Cat {
        exports: vec![
            export("tank/vol1", 1 << 30, false),
            export("tank/ro", 1 << 20, true),
        ],
        shutting: false,
    }
}

#[derive(Debug)]
enum Outcome {
    Done(Box<Negotiated<String>>),
    Closed,
    Incomplete,
    Failed(HandshakeError),
}

/// Drives a handshake over a complete client byte stream, the way a connection would. A
/// [`Step::StartTls`] is taken as a TLS handshake that succeeded: the bytes after the STARTTLS
/// option are what the client sends inside TLS.
fn drive(hs: &mut Handshake, client: &[u8], cat: &Cat, out: &mut Vec<u8>) -> Outcome {
    let mut pos = 0usize;
    let mut step: Step<String> = hs.first_step();
    loop {
        let r = match step {
            Step::Need(n) => {
                assert!(n <= 64 * 1024, "buffered option larger than the limit: {n}");
                if client.len() - pos < n {
                    return Outcome::Incomplete;
                }
                let input = &client[pos..pos + n];
                pos += n;
                hs.receive(input, cat, out)
            }
            Step::Discard(n) => {
                let n = usize::try_from(n).unwrap();
                if client.len() - pos < n {
                    return Outcome::Incomplete;
                }
                pos += n;
                hs.receive(&[], cat, out)
            }
            Step::Done(n) => return Outcome::Done(n),
            Step::Close => return Outcome::Closed,
            Step::StartTls => {
                assert!(hs.tls_active());
                Ok(hs.next_step())
            }
        };
        step = match r {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(e),
        };
    }
}

fn option(code: u32, data: &[u8]) -> Vec<u8> {
    let mut v = proto::IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn info_data(name: &str, reqs: &[u16]) -> Vec<u8> {
    let mut v = u32::try_from(name.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&u16::try_from(reqs.len()).unwrap().to_be_bytes());
    for r in reqs {
        v.extend_from_slice(&r.to_be_bytes());
    }
    v
}

fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = u32::try_from(name.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&u32::try_from(queries.len()).unwrap().to_be_bytes());
    for q in queries {
        v.extend_from_slice(&u32::try_from(q.len()).unwrap().to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

#[derive(Debug, PartialEq)]
struct OptReply {
    option: u32,
    kind: u32,
    data: Vec<u8>,
}

fn parse_replies(mut b: &[u8]) -> Vec<OptReply> {
    let mut v = Vec::new();
    while !b.is_empty() {
        assert_eq!(
            u64::from_be_bytes(b[0..8].try_into().unwrap()),
            proto::OPT_REPLY_MAGIC
        );
        let option = u32::from_be_bytes(b[8..12].try_into().unwrap());
        let kind = u32::from_be_bytes(b[12..16].try_into().unwrap());
        let len = usize::try_from(u32::from_be_bytes(b[16..20].try_into().unwrap())).unwrap();
        v.push(OptReply {
            option,
            kind,
            data: b[20..20 + len].to_vec(),
        });
        b = &b[20 + len..];
    }
    v
}

fn session(flags: u32, options: &[Vec<u8>]) -> Vec<u8> {
    let mut c = flags.to_be_bytes().to_vec();
    for o in options {
        c.extend_from_slice(o);
    }
    c
}

#[test]
fn greeting_is_fixed_newstyle_with_no_zeroes() {
    let hs = Handshake::new(HandshakeConfig::default());
    let g = hs.greeting();
    assert_eq!(&g[0..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
}

#[test]
fn unknown_client_flags_drop_the_connection() {
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut out = Vec::new();
    match drive(&mut hs, &session(0x4, &[]), &cat(), &mut out) {
        Outcome::Failed(HandshakeError::BadClientFlags(4)) => {}
        o => panic!("{o:?}"),
    }
    assert!(out.is_empty());
}

#[test]
fn export_name_with_and_without_zeroes() {
    for (flags, len) in [(1u32, 10 + 124), (3, 10)] {
        let mut hs = Handshake::new(HandshakeConfig::default());
        let mut out = Vec::new();
        let c = session(flags, &[option(opt::EXPORT_NAME, b"tank/vol1")]);
        let Outcome::Done(n) = drive(&mut hs, &c, &cat(), &mut out) else {
            panic!()
        };
        assert_eq!(out.len(), len);
        assert_eq!(u64::from_be_bytes(out[0..8].try_into().unwrap()), 1 << 30);
        let f = u16::from_be_bytes([out[8], out[9]]);
        assert_eq!(f, n.flags);
        assert_eq!(f & tflags::SEND_DF, 0, "DF without structured replies");
        assert!(
            f & tflags::CAN_MULTI_CONN != 0
                && f & tflags::SEND_FLUSH != 0
                && f & tflags::HAS_FLAGS != 0
        );
        assert_eq!(n.mode, ReplyMode::Simple);
        assert_eq!(n.export, "tank/vol1");
    }
}

#[test]
fn export_name_default_and_unknown() {
    let one = Cat {
        exports: vec![export("p/v", 4096, false)],
        shutting: false,
    };
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut out = Vec::new();
    let Outcome::Done(n) = drive(
        &mut hs,
        &session(3, &[option(opt::EXPORT_NAME, b"")]),
        &one,
        &mut out,
    ) else {
        panic!()
    };
    assert_eq!(n.export, "p/v");
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut out = Vec::new();
    let o = drive(
        &mut hs,
        &session(3, &[option(opt::EXPORT_NAME, b"nope")]),
        &cat(),
        &mut out,
    );
    assert!(
        matches!(o, Outcome::Failed(HandshakeError::UnknownExport(_))),
        "{o:?}"
    );
    assert!(out.is_empty());
}

#[test]
fn unknown_option_is_skipped_and_answered_unsup() {
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut out = Vec::new();
    let c = session(
        3,
        &[
            option(42, b"some payload to skip"),
            option(opt::LIST, b""),
            option(opt::ABORT, b""),
        ],
    );
    assert!(matches!(
        drive(&mut hs, &c, &cat(), &mut out),
        Outcome::Closed
    ));
    let r = parse_replies(&out);
    assert_eq!(
        r[0],
        OptReply {
            option: 42,
            kind: rep::ERR_UNSUP,
            data: b"option not supported".to_vec()
        }
    );
    assert_eq!(r[1].kind, rep::SERVER);
    assert_eq!(&r[1].data[4..13], b"tank/vol1");
    assert_eq!(&r[1].data[13..], b"volume tank/vol1");
    assert_eq!(r[2].kind, rep::SERVER);
    assert_eq!(
        r[3],
        OptReply {
            option: opt::LIST,
            kind: rep::ACK,
            data: vec![]
        }
    );
    assert_eq!(
        r[4],
        OptReply {
            option: opt::ABORT,
            kind: rep::ACK,
            data: vec![]
        }
    );
    assert_eq!(r.len(), 5);
}

#[test]
fn list_with_data_gets_exactly_one_error() {
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut out = Vec::new();
    let c = session(3, &[option(opt::LIST, b"x"), option(opt::ABORT, b"")]);
    assert!(matches!(
        drive(&mut hs, &c, &cat(), &mut out),
        Outcome::Closed
    ));
    let r = parse_replies(&out);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].kind, rep::ERR_INVALID);
    assert_eq!(r[1].kind, rep::ACK);
}

#[test]
fn info_then_go_report_the_same_export() {
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut out = Vec::new();
    let reqs = [info::NAME, info::DESCRIPTION, info::BLOCK_SIZE, 77];
    let c = session(
        3,
        &[
            option(opt::INFO, &info_data("missing", &[])),
            option(opt::INFO, &info_data("tank/vol1", &reqs)),
            option(opt::GO, &info_data("tank/vol1", &reqs)),
        ],
    );
    let Outcome::Done(n) = drive(&mut hs, &c, &cat(), &mut out) else {
        panic!()
    };
    assert!(n.client_knows_block_size);
    let r = parse_replies(&out);
    assert_eq!(r[0].kind, rep::ERR_UNKNOWN);
    let info_replies: Vec<_> = r[1..].iter().filter(|x| x.option == opt::INFO).collect();
    let go_replies: Vec<_> = r[1..].iter().filter(|x| x.option == opt::GO).collect();
    assert_eq!(info_replies.len(), go_replies.len());
    for (a, b) in info_replies.iter().zip(&go_replies) {
        assert_eq!((a.kind, &a.data), (b.kind, &b.data));
    }
    // EXPORT first, ACK last; NAME, DESCRIPTION and BLOCK_SIZE in between.
    assert_eq!(go_replies[0].kind, rep::INFO);
    assert_eq!(&go_replies[0].data[0..2], &info::EXPORT.to_be_bytes());
    assert_eq!(
        u64::from_be_bytes(go_replies[0].data[2..10].try_into().unwrap()),
        1 << 30
    );
    assert_eq!(go_replies.last().unwrap().kind, rep::ACK);
    let by_code = |code: u16| {
        go_replies
            .iter()
            .find(|x| x.kind == rep::INFO && x.data[0..2] == code.to_be_bytes())
    };
    assert_eq!(&by_code(info::NAME).unwrap().data[2..], b"tank/vol1");
    assert_eq!(
        &by_code(info::DESCRIPTION).unwrap().data[2..],
        b"volume tank/vol1"
    );
    let bs = &by_code(info::BLOCK_SIZE).unwrap().data;
    assert_eq!(bs.len(), 14);
    assert_eq!(u32::from_be_bytes(bs[2..6].try_into().unwrap()), 1);
    assert_eq!(u32::from_be_bytes(bs[6..10].try_into().unwrap()), 4096);
    assert_eq!(u32::from_be_bytes(bs[10..14].try_into().unwrap()), 32 << 20);
}

#[test]
fn malformed_info_is_invalid_not_fatal() {
    let mut bad_count = info_data("tank/vol1", &[1, 2]);
    bad_count.pop();
    let huge_name = {
        let mut v = 0xffff_fff0u32.to_be_bytes().to_vec();
        v.extend_from_slice(b"abc");
        v
    };
    let bad_utf8 = info_data("\u{0}", &[]);
    for data in [bad_count, huge_name, bad_utf8, vec![], vec![0, 0]] {
        let mut hs = Handshake::new(HandshakeConfig::default());
        let mut out = Vec::new();
        let c = session(3, &[option(opt::GO, &data), option(opt::ABORT, b"")]);
        assert!(matches!(
            drive(&mut hs, &c, &cat(), &mut out),
            Outcome::Closed
        ));
        let r = parse_replies(&out);
        assert_eq!(r[0].kind, rep::ERR_INVALID, "{data:?}");
    }
}

#[test]
fn structured_reply_and_meta_context() {
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut out = Vec::new();
    let c = session(
        3,
        &[
            option(
                opt::SET_META_CONTEXT,
                &meta_data("tank/vol1", &["base:allocation"]),
            ),
            option(opt::STRUCTURED_REPLY, b""),
            option(opt::STRUCTURED_REPLY, b""),
            option(opt::LIST_META_CONTEXT, &meta_data("tank/vol1", &[])),
            option(opt::LIST_META_CONTEXT, &meta_data("tank/vol1", &["base:"])),
            option(
                opt::LIST_META_CONTEXT,
                &meta_data("tank/vol1", &["qemu:dirty-bitmap:x"]),
            ),
            option(
                opt::SET_META_CONTEXT,
                &meta_data("nope", &["base:allocation"]),
            ),
            option(
                opt::SET_META_CONTEXT,
                &meta_data("tank/vol1", &["x-foo:bar", "base:allocation"]),
            ),
            option(opt::GO, &info_data("tank/vol1", &[])),
        ],
    );
    let Outcome::Done(n) = drive(&mut hs, &c, &cat(), &mut out) else {
        panic!()
    };
    assert_eq!(n.mode, ReplyMode::Structured);
    assert_eq!(
        n.base_allocation,
        Some(super::handshake::BASE_ALLOCATION_ID)
    );
    assert!(n.flags & tflags::SEND_DF != 0);
    let r = parse_replies(&out);
    let kinds: Vec<u32> = r.iter().map(|x| x.kind).collect();
    assert_eq!(
        kinds,
        vec![
            rep::ERR_INVALID,
            rep::ACK,
            rep::ERR_INVALID,
            rep::META_CONTEXT,
            rep::ACK,
            rep::META_CONTEXT,
            rep::ACK,
            rep::ACK,
            rep::ERR_UNKNOWN,
            rep::META_CONTEXT,
            rep::ACK,
            rep::INFO,
            rep::INFO,
            rep::ACK
        ]
    );
    assert_eq!(&r[3].data[4..], b"base:allocation");
    assert_eq!(
        u32::from_be_bytes(r[9].data[0..4].try_into().unwrap()),
        super::handshake::BASE_ALLOCATION_ID
    );
}

#[test]
fn meta_context_for_another_export_is_void_at_go() {
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut out = Vec::new();
    let c = session(
        3,
        &[
            option(opt::STRUCTURED_REPLY, b""),
            option(
                opt::SET_META_CONTEXT,
                &meta_data("tank/ro", &["base:allocation"]),
            ),
            option(opt::GO, &info_data("tank/vol1", &[])),
        ],
    );
    let Outcome::Done(n) = drive(&mut hs, &c, &cat(), &mut out) else {
        panic!()
    };
    assert_eq!(n.base_allocation, None);
}

#[test]
fn extended_headers_forbid_export_name() {
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut out = Vec::new();
    let c = session(
        3,
        &[
            option(opt::EXTENDED_HEADERS, b""),
            option(opt::EXPORT_NAME, b"tank/vol1"),
        ],
    );
    let o = drive(&mut hs, &c, &cat(), &mut out);
    assert!(
        matches!(
            o,
            Outcome::Failed(HandshakeError::ExportNameAfterExtendedHeaders)
        ),
        "{o:?}"
    );
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut out = Vec::new();
    let c = session(
        3,
        &[
            option(opt::EXTENDED_HEADERS, b""),
            option(opt::GO, &info_data("tank/ro", &[])),
        ],
    );
    let Outcome::Done(n) = drive(&mut hs, &c, &cat(), &mut out) else {
        panic!()
    };
    assert_eq!(n.mode, ReplyMode::Extended);
    assert!(n.flags & tflags::READ_ONLY != 0);
    assert_eq!(n.flags & tflags::SEND_TRIM, 0);
    // Disabled by configuration: unknown option.
    let cfg = HandshakeConfig {
        extended_headers: false,
        ..HandshakeConfig::default()
    };
    let mut hs = Handshake::new(cfg);
    let mut out = Vec::new();
    let c = session(
        3,
        &[option(opt::EXTENDED_HEADERS, b""), option(opt::ABORT, b"")],
    );
    assert!(matches!(
        drive(&mut hs, &c, &cat(), &mut out),
        Outcome::Closed
    ));
    assert_eq!(parse_replies(&out)[0].kind, rep::ERR_UNSUP);
}

#[test]
fn option_length_limits() {
    let cfg = HandshakeConfig {
        max_option_len: 100,
        max_discard_len: 1000,
        ..HandshakeConfig::default()
    };
    let mut hs = Handshake::new(cfg.clone());
    let mut out = Vec::new();
    let c = session(
        3,
        &[
            option(opt::GO, &[0u8; 500]),
            option(99, &[1u8; 700]),
            option(opt::ABORT, b""),
        ],
    );
    assert!(matches!(
        drive(&mut hs, &c, &cat(), &mut out),
        Outcome::Closed
    ));
    let r = parse_replies(&out);
    assert_eq!((r[0].option, r[0].kind), (opt::GO, rep::ERR_TOO_BIG));
    assert_eq!((r[1].option, r[1].kind), (99, rep::ERR_UNSUP));
    let mut hs = Handshake::new(cfg);
    let mut out = Vec::new();
    let o = drive(
        &mut hs,
        &session(3, &[option(99, &[1u8; 1001])]),
        &cat(),
        &mut out,
    );
    assert!(
        matches!(
            o,
            Outcome::Failed(HandshakeError::OptionTooLong {
                option: 99,
                len: 1001
            })
        ),
        "{o:?}"
    );
}

#[test]
fn too_many_options_and_bad_magic() {
    let cfg = HandshakeConfig {
        max_options: 3,
        ..HandshakeConfig::default()
    };
    let mut hs = Handshake::new(cfg);
    let mut out = Vec::new();
    let o = drive(
        &mut hs,
        &session(3, &vec![option(opt::LIST, b""); 5]),
        &cat(),
        &mut out,
    );
    assert!(
        matches!(o, Outcome::Failed(HandshakeError::TooManyOptions(3))),
        "{o:?}"
    );
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut bad = option(opt::LIST, b"");
    bad[0] ^= 1;
    let o = drive(&mut hs, &session(3, &[bad]), &cat(), &mut out);
    assert!(
        matches!(o, Outcome::Failed(HandshakeError::BadOptionMagic(_))),
        "{o:?}"
    );
    assert!(
        hs.receive(&[0; 16], &cat(), &mut out).is_err(),
        "finished machine accepts input"
    );
}

#[test]
fn shutdown_refuses_options_but_honours_abort() {
    let c = Cat {
        shutting: true,
        ..cat()
    };
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut out = Vec::new();
    let s = session(
        3,
        &[
            option(opt::GO, &info_data("tank/vol1", &[])),
            option(opt::ABORT, b""),
        ],
    );
    assert!(matches!(drive(&mut hs, &s, &c, &mut out), Outcome::Closed));
    let r = parse_replies(&out);
    assert_eq!(r[0].kind, rep::ERR_SHUTDOWN);
    assert_eq!(r[1].kind, rep::ACK);
}

#[test]
fn starttls_is_refused_by_policy() {
    let mut hs = Handshake::new(HandshakeConfig::default());
    let mut out = Vec::new();
    let s = session(3, &[option(opt::STARTTLS, b""), option(opt::ABORT, b"")]);
    assert!(matches!(
        drive(&mut hs, &s, &cat(), &mut out),
        Outcome::Closed
    ));
    assert_eq!(parse_replies(&out)[0].kind, rep::ERR_POLICY);
}

// NBD_OPT_STARTTLS and the TLS policies.
#[path = "handshake_tls_tests.rs"]
mod tls_tests;

// ---- fuzzing ----

fn arb_option() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just("tank/vol1".to_string()),
        Just(String::new()),
        "[a-z/]{0,12}"
    ];
    prop_oneof![
        (0u32..14, prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(o, d)| option(o, &d)),
        (name.clone(), prop::collection::vec(any::<u16>(), 0..6)).prop_map(|(n, r)| option(
            if r.len() % 2 == 0 { opt::INFO } else { opt::GO },
            &info_data(&n, &r)
        )),
        (
            name,
            prop::collection::vec("[a-z:]{0,20}", 0..4),
            any::<bool>()
        )
            .prop_map(|(n, q, set)| {
                let q: Vec<&str> = q.iter().map(String::as_str).collect();
                option(
                    if set {
                        opt::SET_META_CONTEXT
                    } else {
                        opt::LIST_META_CONTEXT
                    },
                    &meta_data(&n, &q),
                )
            }),
        Just(option(opt::STRUCTURED_REPLY, b"")),
        Just(option(opt::EXTENDED_HEADERS, b"")),
        (any::<u32>(), 0u32..2048).prop_map(|(o, l)| {
            let mut v = option(o, &[]);
            v[12..16].copy_from_slice(&l.to_be_bytes());
            v.extend(std::iter::repeat_n(0xa5, usize::try_from(l).unwrap()));
            v
        }),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn handshake_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let cfg = HandshakeConfig { max_option_len: 256, max_discard_len: 4096, ..HandshakeConfig::default() };
        let mut hs = Handshake::new(cfg);
        let mut out = Vec::new();
        let _ = drive(&mut hs, &bytes, &cat(), &mut out);
        prop_assert!(out.len() <= 64 * 1024);
    }

    #[test]
    fn handshake_never_panics_on_option_streams(flags in 0u32..4, policy in 0u8..3, opts in prop::collection::vec(arb_option(), 0..12)) {
        let tls = [TlsPolicy::Off, TlsPolicy::Offered, TlsPolicy::Required][usize::from(policy)];
        let mut hs = Handshake::new(HandshakeConfig { tls, ..HandshakeConfig::default() });
        let mut out = Vec::new();
        let o = drive(&mut hs, &session(flags, &opts), &cat(), &mut out);
        // Every reply produced is well framed (EXPORT_NAME's reply is not an option reply).
        if !matches!(o, Outcome::Done(_)) {
            let _ = parse_replies(&out);
        }
        if let Outcome::Done(n) = o {
            prop_assert!(tls != TlsPolicy::Required || hs.tls_active(), "transmission without TLS");
            prop_assert!(n.flags & tflags::HAS_FLAGS != 0);
            if n.mode == ReplyMode::Simple {
                prop_assert!(n.base_allocation.is_none());
                prop_assert_eq!(n.flags & tflags::SEND_DF, 0);
            }
        }
    }
}
