//! NBD over TLS (NBD_OPT_STARTTLS) with real clients: libnbd's nbdinfo and nbdcopy, and
//! qemu-io, all GnuTLS-based, against certificates made by `openssl` for each test. Each test
//! skips (printing why) when a tool is missing.

#[path = "nbd/client.rs"]
mod client;
#[path = "nbd/common.rs"]
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

use client::Client;
use ringpool_driver::nbd::proto::{opt, rep};
use ringpool_driver::nbd::TlsConfig;

/// A throw-away PKI: a CA, a server certificate for 127.0.0.1/localhost, a client certificate,
/// and client directories laid out as GnuTLS clients (libnbd, qemu) expect them.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Option<Pki> {
        if !have("openssl") {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ossl = |args: &[&str]| {
            run(Command::new("openssl").current_dir(d).args(args));
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-days",
            "2",
            "-subj",
            "/CN=ringpool test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
        ]);
        ossl(&ca);
        for (name, cn, ext) in [
            (
                "server",
                "localhost",
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "client",
                "ringpool test client",
                "extendedKeyUsage=clientAuth\n",
            ),
        ] {
            let extfile = format!("{name}.ext");
            std::fs::write(
                d.join(&extfile),
                format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"),
            )
            .expect("ext");
            let (key, csr, cert) = (
                format!("{name}-key.pem"),
                format!("{name}.csr"),
                format!("{name}-cert.pem"),
            );
            let subj = format!("/CN={cn}");
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-subj", &subj, "-keyout", &key, "-out", &csr]);
            ossl(&req);
            ossl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca-cert.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &cert,
            ]);
        }
        // Client directories: with only the CA (server authentication), and with the
        // client's own certificate as well (mutual TLS).
        for (sub, with_cert) in [("anon", false), ("mutual", true)] {
            let c = d.join(sub);
            std::fs::create_dir(&c).expect("mkdir");
            std::fs::copy(d.join("ca-cert.pem"), c.join("ca-cert.pem")).expect("copy");
            if with_cert {
                std::fs::copy(d.join("client-cert.pem"), c.join("client-cert.pem")).expect("cp");
                std::fs::copy(d.join("client-key.pem"), c.join("client-key.pem")).expect("cp");
            }
        }
        Some(Pki { dir })
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn server(&self, client_ca: bool, require: bool) -> TlsConfig {
        let ca = self.path("ca-cert.pem");
        TlsConfig::from_pem_files(
            &self.path("server-cert.pem"),
            &self.path("server-key.pem"),
            client_ca.then_some(ca.as_path()),
            require,
        )
        .expect("TLS config")
    }

    /// A client directory: `anon` (CA only) or `mutual` (also the client certificate).
    fn client(&self, sub: &str) -> PathBuf {
        self.path(sub)
    }
}

fn tls_server(pki: &Pki, client_ca: bool, require: bool) -> TestServer {
    let cfg = pki.server(client_ca, require);
    TestServer::start_with(64 << 20, 512, move |c| c.tls = Some(cfg))
}

fn tls_uri(s: &TestServer, certs: &Path) -> String {
    format!(
        "nbds://127.0.0.1:{}/{EXPORT}?tls-certificates={}",
        s.port(),
        certs.display()
    )
}

fn tls_unix_uri(s: &TestServer, certs: &Path) -> String {
    format!(
        "nbds+unix:///{EXPORT}?socket={}&tls-certificates={}",
        s.sock().display(),
        certs.display()
    )
}

fn nbdinfo(uri: &str) -> std::process::Output {
    Command::new("nbdinfo")
        .args(["--json", uri])
        .output()
        .expect("run nbdinfo")
}

#[test]
fn nbdinfo_over_tls_and_plain_clients_refused_when_required() {
    let Some(pki) = Pki::new() else { return };
    if !have("nbdinfo") {
        return;
    }
    let s = tls_server(&pki, false, true);
    for uri in [
        tls_uri(&s, &pki.client("anon")),
        tls_unix_uri(&s, &pki.client("anon")),
    ] {
        let o = nbdinfo(&uri);
        assert!(
            o.status.success(),
            "{uri}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let e = &v["exports"][0];
        assert_eq!(e["export-size"], 64 << 20, "{v}");
        assert_eq!(e["is_read_only"], false, "{v}");
        assert_eq!(e["can_multi_conn"], true, "{v}");
        // Structured replies and base:allocation negotiated inside TLS.
        assert!(v.to_string().contains("base:allocation"), "{v}");
    }
    // A plain-text client learns nothing: the server requires TLS.
    let o = Command::new("nbdinfo")
        .env("LIBNBD_DEBUG", "1")
        .args(["--json", &s.tcp_uri(EXPORT)])
        .output()
        .expect("run nbdinfo");
    assert!(!o.status.success(), "plain client served: {o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert!(err.contains("TLS is required"), "{err}");
    s.wait_idle();
    assert_eq!(s.connections(), 0);
}

#[test]
fn qemu_io_reads_and_writes_through_tls() {
    let Some(pki) = Pki::new() else { return };
    if !have("qemu-io") {
        return;
    }
    let s = tls_server(&pki, false, true);
    let creds = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        pki.client("anon").display()
    );
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export={EXPORT},tls-creds=tls0",
        s.port()
    );
    let o = run(Command::new("qemu-io")
        .args(["--object", &creds, "--image-opts", &opts])
        .args([
            "-c",
            "write -P 0x5a 0 4M",
            "-c",
            "write -f -P 0xa5 8M 64k",
            "-c",
            "flush",
            "-c",
            "read -P 0x5a 0 4M",
            "-c",
            "read -P 0xa5 8M 64k",
            "-c",
            "write -z 1M 1M",
            "-c",
            "read -P 0 1M 1M",
        ]));
    let out = stdout(&o);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(!out.to_lowercase().contains("error"), "{out}");
    // The bytes are in the backend, not only echoed by the pump.
    assert_eq!(s.mem.contents(0, 4096), vec![0x5a; 4096]);
    assert_eq!(s.mem.contents(1 << 20, 4096), vec![0; 4096]);
    assert_eq!(s.mem.contents(8 << 20, 65536), vec![0xa5; 65536]);
}

#[test]
fn nbdcopy_round_trip_over_tls_with_several_connections() {
    let Some(pki) = Pki::new() else { return };
    if !have("nbdcopy") {
        return;
    }
    let s = tls_server(&pki, false, true);
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src.img");
    let back = work.path().join("back.img");
    random_file(&src, 48 << 20, 7);
    let uri = tls_uri(&s, &pki.client("anon"));
    run(Command::new("nbdcopy")
        .args(["--connections=4", "--requests=16"])
        .arg(&src)
        .arg(&uri));
    run(Command::new("nbdcopy")
        .args(["--connections=4"])
        .arg(&uri)
        .arg(&back));
    let a = std::fs::read(&src).expect("src");
    let b = std::fs::read(&back).expect("back");
    assert_eq!(
        &b[..a.len()],
        &a[..],
        "the copy out differs from the copy in"
    );
    assert!(b[a.len()..].iter().all(|&x| x == 0), "past the image");
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate() {
    let Some(pki) = Pki::new() else { return };
    if !have("nbdinfo") {
        return;
    }
    let s = tls_server(&pki, true, true);
    let o = nbdinfo(&tls_uri(&s, &pki.client("mutual")));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = nbdinfo(&tls_uri(&s, &pki.client("anon")));
    assert!(
        !o.status.success(),
        "a client without a certificate was served"
    );
    s.wait_idle();
    assert_eq!(
        s.connections(),
        0,
        "the failed TLS handshake left a connection"
    );
}

#[test]
fn tls_on_serves_plain_and_tls_clients() {
    let Some(pki) = Pki::new() else { return };
    if !have("nbdinfo") {
        return;
    }
    let s = tls_server(&pki, false, false);
    for uri in [s.tcp_uri(EXPORT), tls_uri(&s, &pki.client("anon"))] {
        let o = nbdinfo(&uri);
        assert!(
            o.status.success(),
            "{uri}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn a_bad_key_is_a_clear_configuration_error() {
    let Some(pki) = Pki::new() else { return };
    // The client's key does not belong to the server's certificate.
    let e = TlsConfig::from_pem_files(
        &pki.path("server-cert.pem"),
        &pki.path("client-key.pem"),
        None,
        true,
    )
    .expect_err("mismatched key accepted");
    assert!(e.to_string().contains("server-cert.pem"), "{e}");
}

/// Garbage where the TLS handshake should be, and a client that vanishes in the middle of it:
/// the connection ends (an alert at most), the server keeps serving others.
#[test]
fn garbage_after_starttls_closes_only_that_connection() {
    use std::io::{Read, Write};
    let Some(pki) = Pki::new() else { return };
    let s = tls_server(&pki, false, true);
    let mut c = Client::connect_raw(&s);
    Client::greet(&mut c);
    let r = Client::opt_exchange(&mut c, opt::GO, &[0, 0, 0, 0, 0, 0]);
    assert_eq!(r[0].0, rep::ERR_TLS_REQD);
    let r = Client::opt_exchange(&mut c, opt::STARTTLS, &[]);
    assert_eq!(r, vec![(rep::ACK, Vec::new())]);
    // Not a TLS record: an NBD option in plain text.
    c.write_all(&Client::option_bytes(opt::GO, &[0, 0, 0, 0, 0, 0]))
        .expect("write");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(
        rest.len() < 64,
        "more than an alert came back: {} bytes",
        rest.len()
    );
    // A second client starts TLS and then disappears.
    let mut c = Client::connect_raw(&s);
    Client::greet(&mut c);
    let _ = Client::opt_exchange(&mut c, opt::STARTTLS, &[]);
    c.write_all(&[0x16, 0x03, 0x01, 0x02]).expect("write");
    drop(c);
    s.wait_idle();
    assert_eq!(s.connections(), 0);
    if have("nbdinfo") {
        let o = nbdinfo(&tls_uri(&s, &pki.client("anon")));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}
