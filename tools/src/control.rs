//! The control socket: while `serve` holds pools, other commands reach them through a unix
//! socket in the state directory (mode 0600). One JSON [`Request`] line in, one JSON
//! [`Response`] line out, per connection; a long request may send `Progress` lines first.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::request::{Progress, Request, Response};

/// What answers a request on the serve side: the request, and where to report progress.
pub type Handler = dyn Fn(Request, &mut dyn FnMut(Progress)) -> Response + Send + Sync;

/// Longest request line accepted (a request is a few hundred bytes).
const MAX_LINE: u64 = 1 << 20;
/// Longest answer line accepted (`inspect spacemap` of a long map is the largest).
const MAX_ANSWER: u64 = 64 << 20;

/// Sends `req` to the `serve` listening on `socket`. `Ok(None)` when nobody listens there.
pub fn call(socket: &Path, req: &Request) -> Result<Option<Response>> {
    call_with_progress(socket, req, &mut |_| {})
}

/// [`call`], passing the progress lines the server sends before its answer to `progress`.
pub fn call_with_progress(
    socket: &Path,
    req: &Request,
    progress: &mut dyn FnMut(Progress),
) -> Result<Option<Response>> {
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot reach {}", socket.display())),
    };
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut reader = BufReader::new(&stream);
    loop {
        let mut answer = String::new();
        (&mut reader).take(MAX_ANSWER).read_line(&mut answer)?;
        let resp = serde_json::from_str(&answer)
            .with_context(|| format!("bad answer from the server on {}", socket.display()))?;
        match resp {
            Response::Progress(p) => progress(p),
            resp => return Ok(Some(resp)),
        }
    }
}

/// Serves the control socket until the process exits: each connection is answered by
/// `handle` on its own short-lived thread.
pub fn listen(socket: &Path, handle: Arc<Handler>) -> Result<UnixListener> {
    if socket.exists() {
        std::fs::remove_file(socket).ok();
    }
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    crate::statedir::StateDir::restrict(socket)?;
    let accept = listener.try_clone()?;
    std::thread::Builder::new()
        .name("ringpool-control".into())
        .spawn(move || {
            for stream in accept.incoming().flatten() {
                let handle = Arc::clone(&handle);
                let spawned = std::thread::Builder::new()
                    .name("ringpool-control-conn".into())
                    .spawn(move || serve_one(stream, handle.as_ref()));
                if let Err(e) = spawned {
                    tracing::warn!("control connection dropped: {e}");
                }
            }
        })?;
    Ok(listener)
}

fn serve_one(stream: UnixStream, handle: &Handler) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut reader = BufReader::new((&stream).take(MAX_LINE));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut report = |p: Progress| {
        // A client that went away only loses its progress; the request still completes.
        if let Ok(mut text) = serde_json::to_string(&Response::Progress(p)) {
            text.push('\n');
            (&stream).write_all(text.as_bytes()).ok();
        }
    };
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handle(req, &mut report),
        Err(e) => Response::Error {
            message: format!("malformed control request: {e}"),
        },
    };
    if let Ok(mut text) = serde_json::to_string(&resp) {
        text.push('\n');
        (&stream).write_all(text.as_bytes()).ok();
    }
}
