//! Thin socket wrappers whose accept/recv/send/connect go through the reactor's ring.
//!
//! Sockets stay in blocking mode: the ring never blocks on them (io_uring polls internally),
//! and plain syscalls are only used for setup (bind, listen, setsockopt, shutdown).

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::Path;

use crate::io::buf::IoBuf;
use crate::io::error::{IoError, OpKind};
use crate::io::ops::{self, FileRef};
use crate::io::reactor::SockAddrBuf;

/// A socket option's value type for [`get_sockopt`]: plain integers (or a struct of them), so
/// every byte pattern the kernel writes is a valid value.
pub(crate) trait SockoptValue: Copy {}
impl SockoptValue for libc::c_int {}
impl SockoptValue for libc::ucred {}

/// getsockopt(2) of option `name` at `level` on `fd`; `init` is the value the kernel
/// overwrites (and what is left of it where it writes less).
pub(crate) fn get_sockopt<T: SockoptValue>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    init: T,
) -> Result<T, IoError> {
    let mut v = init;
    let mut len =
        libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: the kernel writes at most `len` bytes, `v`'s size, into the live local `v`, and
    // any bytes make a valid `T` (SockoptValue). A bad descriptor is an error return.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            std::ptr::from_mut(&mut v).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(IoError::last_os(OpKind::Other));
    }
    Ok(v)
}

/// A TCP listener.
#[derive(Debug)]
pub struct TcpListener {
    inner: StdTcpListener,
}

impl TcpListener {
    /// Bind and listen (std; SO_REUSEADDR is std's default on Unix).
    pub fn bind(addr: SocketAddr) -> Result<TcpListener, IoError> {
        let inner = StdTcpListener::bind(addr).map_err(|e| IoError::from_std(OpKind::Other, &e))?;
        Ok(TcpListener { inner })
    }

    /// Wrap an already listening std socket.
    pub fn from_std(inner: StdTcpListener) -> TcpListener {
        TcpListener { inner }
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, IoError> {
        self.inner
            .local_addr()
            .map_err(|e| IoError::from_std(OpKind::Other, &e))
    }

    /// Accept a connection through the ring; TCP_NODELAY is set on it.
    pub async fn accept(&self) -> Result<Stream, IoError> {
        let fd = ops::accept(self.inner.as_raw_fd()).await?;
        let s = Stream { fd };
        // Latency matters more than packet count for a block protocol.
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

/// A Unix stream listener.
#[derive(Debug)]
pub struct UnixListener {
    inner: StdUnixListener,
}

impl UnixListener {
    /// Bind and listen on `path`.
    pub fn bind(path: impl AsRef<Path>) -> Result<UnixListener, IoError> {
        let inner =
            StdUnixListener::bind(path).map_err(|e| IoError::from_std(OpKind::Other, &e))?;
        Ok(UnixListener { inner })
    }

    /// Wrap an already listening std socket.
    pub fn from_std(inner: StdUnixListener) -> UnixListener {
        UnixListener { inner }
    }

    /// Accept a connection through the ring.
    pub async fn accept(&self) -> Result<Stream, IoError> {
        let fd = ops::accept(self.inner.as_raw_fd()).await?;
        Ok(Stream { fd })
    }
}

impl AsRawFd for UnixListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

/// A connected stream socket (TCP or Unix).
#[derive(Debug)]
pub struct Stream {
    fd: OwnedFd,
}

fn new_socket(domain: i32) -> Result<OwnedFd, IoError> {
    // SAFETY: plain syscall without pointers.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(IoError::last_os(OpKind::Connect));
    }
    // SAFETY: fresh descriptor owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn sockaddr_from(addr: &SocketAddr) -> SockAddrBuf {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe {
                std::ptr::write(
                    std::ptr::from_mut(&mut storage).cast::<libc::sockaddr_in>(),
                    sin,
                )
            };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or(10),
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe {
                std::ptr::write(
                    std::ptr::from_mut(&mut storage).cast::<libc::sockaddr_in6>(),
                    sin6,
                )
            };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    SockAddrBuf {
        storage,
        len: libc::socklen_t::try_from(len).unwrap_or(0),
    }
}

fn sockaddr_unix(path: &Path) -> Result<SockAddrBuf, IoError> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_storage is plain old data.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: sockaddr_un fits in sockaddr_storage; we only write within it.
    let sun = unsafe { &mut *std::ptr::from_mut(&mut storage).cast::<libc::sockaddr_un>() };
    if bytes.len() >= sun.sun_path.len() {
        return Err(IoError::Os {
            op: OpKind::Connect,
            errno: libc::ENAMETOOLONG,
        });
    }
    sun.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap_or(1);
    for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok(SockAddrBuf {
        storage,
        len: libc::socklen_t::try_from(len).unwrap_or(0),
    })
}

impl Stream {
    /// Connect over TCP through the ring (TCP_NODELAY set).
    pub async fn connect_tcp(addr: SocketAddr) -> Result<Stream, IoError> {
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = new_socket(domain)?;
        ops::connect_raw(FileRef::Raw(fd.as_raw_fd()), sockaddr_from(&addr)).await?;
        let s = Stream { fd };
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    /// Connect to a Unix socket through the ring.
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Stream, IoError> {
        let fd = new_socket(libc::AF_UNIX)?;
        ops::connect_raw(FileRef::Raw(fd.as_raw_fd()), sockaddr_unix(path.as_ref())?).await?;
        Ok(Stream { fd })
    }

    /// Wrap a connected socket descriptor.
    pub fn from_fd(fd: OwnedFd) -> Stream {
        Stream { fd }
    }

    /// Give up the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// See [`ops::recv`]: appends into `buf[len..capacity]`.
    pub async fn recv(&self, buf: IoBuf) -> (Result<usize, IoError>, IoBuf) {
        ops::recv(self.fd.as_raw_fd(), buf).await
    }

    /// See [`ops::recv_into`].
    pub async fn recv_into(
        &self,
        buf: IoBuf,
        range: Range<usize>,
    ) -> (Result<usize, IoError>, IoBuf) {
        ops::recv_into(self.fd.as_raw_fd(), buf, range).await
    }

    /// See [`ops::recv_exact_into`].
    pub async fn recv_exact_into(
        &self,
        buf: IoBuf,
        range: Range<usize>,
    ) -> (Result<(), IoError>, IoBuf) {
        ops::recv_exact_into(self.fd.as_raw_fd(), buf, range).await
    }

    /// See [`ops::send`].
    pub async fn send(&self, buf: IoBuf) -> (Result<usize, IoError>, IoBuf) {
        ops::send(self.fd.as_raw_fd(), buf).await
    }

    /// See [`ops::send_range`].
    pub async fn send_range(
        &self,
        buf: IoBuf,
        range: Range<usize>,
    ) -> (Result<usize, IoError>, IoBuf) {
        ops::send_range(self.fd.as_raw_fd(), buf, range).await
    }

    /// See [`ops::send_vectored`].
    pub async fn send_vectored(&self, bufs: Vec<IoBuf>) -> (Result<usize, IoError>, Vec<IoBuf>) {
        ops::send_vectored(self.fd.as_raw_fd(), bufs).await
    }

    /// See [`ops::send_all_vectored`].
    pub async fn send_all_vectored(&self, bufs: Vec<IoBuf>) -> (Result<(), IoError>, Vec<IoBuf>) {
        ops::send_all_vectored(self.fd.as_raw_fd(), bufs).await
    }

    /// See [`ops::send_all_ranges`].
    pub async fn send_all_ranges(
        &self,
        bufs: Vec<IoBuf>,
        ranges: Vec<Range<usize>>,
        offload: bool,
    ) -> (Result<(), IoError>, Vec<IoBuf>) {
        ops::send_all_ranges(self.fd.as_raw_fd(), bufs, ranges, offload).await
    }

    /// See [`ops::send_all`].
    pub async fn send_all(&self, buf: IoBuf) -> (Result<(), IoError>, IoBuf) {
        ops::send_all(self.fd.as_raw_fd(), buf).await
    }

    /// shutdown(2).
    pub fn shutdown(&self, how: std::net::Shutdown) -> Result<(), IoError> {
        ops::shutdown(self.fd.as_raw_fd(), how)
    }

    /// Set SO_SNDBUF to `bytes` (the kernel doubles it for bookkeeping and caps it at
    /// `net.core.wmem_max`); returns the size the kernel reports afterwards.
    pub fn set_send_buffer(&self, bytes: usize) -> Result<usize, IoError> {
        let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
        // SAFETY: passes a pointer to a live local c_int and its exact size.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                std::ptr::from_ref(&v).cast::<libc::c_void>(),
                len,
            )
        };
        if r < 0 {
            return Err(IoError::last_os(OpKind::Other));
        }
        let got = get_sockopt(self.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 0)?;
        Ok(usize::try_from(got).unwrap_or(0))
    }

    /// Set TCP_NODELAY (fails harmlessly on Unix sockets).
    pub fn set_nodelay(&self, on: bool) -> Result<(), IoError> {
        let v: libc::c_int = i32::from(on);
        // SAFETY: passes a pointer to a live local c_int and its exact size.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                std::ptr::from_ref(&v).cast::<libc::c_void>(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
            )
        };
        if r < 0 {
            return Err(IoError::last_os(OpKind::Other));
        }
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
