//! Handshake tests of NBD_OPT_STARTTLS: the policies (off, offered, required), what may be
//! said before TLS, and that TLS forgets what was negotiated in plain text.

use super::*;

fn tls(policy: TlsPolicy) -> Handshake {
    Handshake::new(HandshakeConfig {
        tls: policy,
        ..HandshakeConfig::default()
    })
}

fn kinds(out: &[u8]) -> Vec<u32> {
    parse_replies(out).iter().map(|r| r.kind).collect()
}

#[test]
fn tls_required_refuses_every_option_but_starttls_and_abort() {
    let mut hs = tls(TlsPolicy::Required);
    let mut out = Vec::new();
    let mut unknown = option(99, b"");
    unknown[12..16].copy_from_slice(&100u32.to_be_bytes());
    unknown.extend_from_slice(&[7u8; 100]);
    let s = session(
        3,
        &[
            option(opt::GO, &info_data("tank/vol1", &[])),
            option(opt::LIST, b""),
            option(opt::STRUCTURED_REPLY, b""),
            unknown,
            option(opt::STARTTLS, b"x"),
            option(opt::STARTTLS, b""),
            // Inside TLS from here on.
            option(opt::STARTTLS, b""),
            option(opt::LIST, b""),
            option(opt::GO, &info_data("tank/vol1", &[])),
        ],
    );
    let Outcome::Done(n) = drive(&mut hs, &s, &cat(), &mut out) else {
        panic!("no transmission: {:?}", kinds(&out))
    };
    assert_eq!(n.info.name, "tank/vol1");
    assert_eq!(
        kinds(&out),
        vec![
            rep::ERR_TLS_REQD,
            rep::ERR_TLS_REQD,
            rep::ERR_TLS_REQD,
            rep::ERR_TLS_REQD,
            rep::ERR_INVALID,
            rep::ACK,
            rep::ERR_INVALID,
            rep::SERVER,
            rep::SERVER,
            rep::ACK,
            rep::INFO,
            rep::INFO,
            rep::ACK
        ]
    );
    assert!(hs.tls_active());
}

#[test]
fn tls_required_export_name_disconnects_and_abort_is_honoured() {
    let mut hs = tls(TlsPolicy::Required);
    let mut out = Vec::new();
    let s = session(3, &[option(opt::EXPORT_NAME, b"tank/vol1")]);
    assert!(matches!(
        drive(&mut hs, &s, &cat(), &mut out),
        Outcome::Failed(HandshakeError::TlsRequired)
    ));
    assert!(out.is_empty(), "nothing about the export leaks before TLS");
    let mut hs = tls(TlsPolicy::Required);
    let mut out = Vec::new();
    let s = session(3, &[option(opt::ABORT, b"")]);
    assert!(matches!(
        drive(&mut hs, &s, &cat(), &mut out),
        Outcome::Closed
    ));
    assert_eq!(kinds(&out), vec![rep::ACK]);
}

#[test]
fn starttls_forgets_what_was_negotiated_in_plain_text() {
    let mut hs = tls(TlsPolicy::Offered);
    let mut out = Vec::new();
    let s = session(
        3,
        &[
            option(opt::STRUCTURED_REPLY, b""),
            option(
                opt::SET_META_CONTEXT,
                &meta_data("tank/vol1", &["base:allocation"]),
            ),
            option(opt::STARTTLS, b""),
            option(opt::GO, &info_data("tank/vol1", &[])),
        ],
    );
    let Outcome::Done(n) = drive(&mut hs, &s, &cat(), &mut out) else {
        panic!("no transmission: {:?}", kinds(&out))
    };
    assert_eq!(n.mode, ReplyMode::Simple);
    assert_eq!(n.base_allocation, None);
    assert_eq!(n.flags & tflags::SEND_DF, 0);
    // Negotiating again inside TLS works as on a fresh connection.
    let mut hs = tls(TlsPolicy::Offered);
    let mut out = Vec::new();
    let s = session(
        3,
        &[
            option(opt::STRUCTURED_REPLY, b""),
            option(opt::STARTTLS, b""),
            option(opt::STRUCTURED_REPLY, b""),
            option(opt::GO, &info_data("tank/vol1", &[])),
        ],
    );
    let Outcome::Done(n) = drive(&mut hs, &s, &cat(), &mut out) else {
        panic!("no transmission: {:?}", kinds(&out))
    };
    assert_eq!(n.mode, ReplyMode::Structured);
    assert_eq!(kinds(&out)[..3], [rep::ACK, rep::ACK, rep::ACK]);
}

#[test]
fn tls_offered_also_serves_plain_clients() {
    let mut hs = tls(TlsPolicy::Offered);
    let mut out = Vec::new();
    let s = session(3, &[option(opt::GO, &info_data("tank/vol1", &[]))]);
    assert!(matches!(
        drive(&mut hs, &s, &cat(), &mut out),
        Outcome::Done(_)
    ));
    assert!(!hs.tls_active());
}
