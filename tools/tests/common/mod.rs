//! Helpers shared by the `ringpool` end-to-end tests: a temporary state directory, running
//! commands, a `serve` child, qemu-io.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Env {
        // Under /tmp (ext4): the pool opens its devices with O_DIRECT.
        let dir = tempfile::Builder::new()
            .prefix("ringpool-cli")
            .tempdir_in("/tmp")
            .unwrap();
        Env { dir }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ringpool"));
        c.env("RINGPOOL_STATE_DIR", self.state())
            .env("RINGPOOL_LOG", "warn")
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ringpool {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "ringpool {args:?} unexpectedly succeeded"
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `ringpool serve`; SIGKILLed if a test fails before stopping it.
pub struct Serve {
    child: Option<Child>,
    pub lines: Vec<String>,
}

impl Serve {
    pub fn start(env: &Env, port: u16, extra: &[&str]) -> Serve {
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["serve", "--listen", &listen, "--reactors", "2"];
        args.extend_from_slice(extra);
        Serve::spawn(env.cmd(&args))
    }

    /// Runs `cmd`, which must end up running `ringpool serve` (e.g. through a shell that
    /// prepares its devices first), until serve says it is ready.
    pub fn spawn(mut cmd: Command) -> Serve {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).unwrap();
            assert!(n > 0, "serve exited before it was ready: {lines:?}");
            lines.push(line.trim_end().to_string());
            if line.starts_with("ready:") {
                break;
            }
            assert!(Instant::now() < deadline, "serve not ready: {lines:?}");
        }
        // Keep draining stdout so serve never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Serve {
            child: Some(child),
            lines,
        }
    }

    /// The process id (of serve itself when the command exec'd it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status, once serve exits on its own (after a signal the test sent).
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill has no memory effects; `pid` is our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        child.wait().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

pub fn qemu_io(url: &str, cmds: &[&str]) -> Output {
    qemu_io_opts(url, &[], cmds)
}

/// qemu-io with extra options (e.g. `-r` to open read-only).
pub fn qemu_io_opts(url: &str, opts: &[&str], cmds: &[&str]) -> Output {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]).args(opts);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(url).output().unwrap()
}

pub fn assert_qemu_io(url: &str, cmds: &[&str]) {
    assert_qemu_io_opts(url, &[], cmds);
}

pub fn assert_qemu_io_opts(url: &str, opts: &[&str], cmds: &[&str]) {
    let out = qemu_io_opts(url, opts, cmds);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success()
            && !text.contains("Pattern verification failed")
            && !text.contains("failed"),
        "qemu-io {cmds:?}: {text}"
    );
}
