//! Sockets through the ring: accept/recv/send echo over TCP loopback and a Unix socket.

use std::net::SocketAddr;

use ringpool_driver::io::{self, net, IoBuf, IoError, ReactorConfig};

fn cfg() -> ReactorConfig {
    ReactorConfig {
        arena_bytes: 0,
        ..ReactorConfig::default()
    }
}

async fn echo_server(conn: net::Stream) -> usize {
    let mut total = 0;
    loop {
        let (r, buf) = conn.recv(IoBuf::with_capacity(64 * 1024)).await;
        let n = r.unwrap();
        if n == 0 {
            return total;
        }
        total += n;
        let (r, _) = conn.send_all(buf).await;
        r.unwrap();
    }
}

async fn echo_client(conn: net::Stream) {
    // Messages of different sizes, including one larger than socket buffers.
    for size in [1usize, 100, 4096, 65536, 1 << 20] {
        let data: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let send = IoBuf::from_slice(&data);
        let recv_task = {
            // Receive concurrently with sending so large messages cannot deadlock.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&conn);
            io::spawn_local(async move {
                let buf = IoBuf::zeroed(size + 16);
                // Receive into a window at offset 16 (as the NBD server does for payloads).
                let (r, buf) = io::recv_exact_into(fd, buf, 16..16 + size).await;
                r.unwrap();
                buf
            })
        };
        let (r, _) = conn.send_all(send).await;
        r.unwrap();
        let buf = recv_task.await.unwrap();
        assert_eq!(&buf[16..], &data[..], "echo of {size} bytes");
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    // The server sees EOF and closes; recv then returns 0.
    let (r, _) = conn.recv(IoBuf::with_capacity(16)).await;
    assert_eq!(r.unwrap(), 0);
}

#[test]
fn tcp_echo() {
    io::block_on(&cfg(), async {
        let l = net::TcpListener::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let server = io::spawn_local(async move {
            let conn = l.accept().await.unwrap();
            echo_server(conn).await
        });
        let c = net::Stream::connect_tcp(addr).await.unwrap();
        echo_client(c).await;
        let total = server.await.unwrap();
        assert_eq!(total, 1 + 100 + 4096 + 65536 + (1 << 20));
    })
    .unwrap();
}

#[test]
fn unix_echo_and_errors() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let path = dir.path().join("sock");
    io::block_on(&cfg(), async move {
        let l = net::UnixListener::bind(&path).unwrap();
        let server = io::spawn_local(async move {
            let conn = l.accept().await.unwrap();
            echo_server(conn).await
        });
        let c = net::Stream::connect_unix(&path).await.unwrap();
        echo_client(c).await;
        server.await.unwrap();
        // Connecting to nothing is a typed error with errno.
        let e = net::Stream::connect_unix(dir.path().join("nope"))
            .await
            .unwrap_err();
        assert!(matches!(e, IoError::Os { .. }));
        assert_eq!(e.errno(), libc::ENOENT);
    })
    .unwrap();
}

#[test]
fn accept_can_be_cancelled() {
    io::block_on(&cfg(), async {
        let l = net::TcpListener::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap()).unwrap();
        let h = io::spawn_local(async move {
            let _ = l.accept().await;
        });
        io::sleep(std::time::Duration::from_millis(5)).await;
        h.abort();
        assert!(matches!(h.await, Err(io::JoinError::Cancelled)));
        io::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(
            io::reactor_stats().unwrap().1,
            0,
            "accept op cancelled and reaped"
        );
    })
    .unwrap();
}

#[test]
fn vectored_send_all() {
    io::block_on(&cfg(), async {
        let l = net::TcpListener::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let server = io::spawn_local(async move {
            let conn = l.accept().await.unwrap();
            let total = 16 + (2 << 20) + 3;
            let (r, buf) = conn.recv_exact_into(IoBuf::zeroed(total), 0..total).await;
            r.unwrap();
            buf
        });
        // Raw connect through the ring on a plain socket.
        // SAFETY: plain syscall.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor owned by the stream from here on.
        let s = net::Stream::from_fd(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
        io::connect(fd, &addr).await.unwrap();
        let header = IoBuf::from_slice(&[0xa5; 16]);
        let payload: Vec<u8> = (0..2u32 << 20)
            .map(|i| u8::try_from(i % 199).unwrap())
            .collect();
        let tail = IoBuf::from_slice(&[1, 2, 3]);
        let empty = IoBuf::with_capacity(0);
        let (r, bufs) = s
            .send_all_vectored(vec![header, empty, IoBuf::from_slice(&payload), tail])
            .await;
        r.unwrap();
        assert_eq!(bufs.len(), 4, "buffers come back");
        let got = server.await.unwrap();
        assert!(got[..16].iter().all(|&x| x == 0xa5));
        assert_eq!(&got[16..16 + payload.len()], &payload[..]);
        assert_eq!(&got[16 + payload.len()..], &[1, 2, 3]);
    })
    .unwrap();
}

/// Windows of several buffers go out whole and in order, from the reactor and from a kernel
/// worker (offload), also when they outgrow the socket buffer (short sends, retried), and a
/// single window takes the plain-send path.
#[test]
// A list of one window (not the numbers in it) is what these calls mean.
#[allow(clippy::single_range_in_vec_init)]
fn ranged_send_all() {
    for offload in [false, true] {
        io::block_on(&cfg(), async move {
            let l = net::TcpListener::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap()).unwrap();
            let addr = l.local_addr().unwrap();
            let big: Vec<u8> = (0..3u32 << 20)
                .map(|i| u8::try_from(i % 241).unwrap())
                .collect();
            let small: Vec<u8> = (0..5000u32)
                .map(|i| u8::try_from(i % 13).unwrap())
                .collect();
            // What the windows below carry, in order, then the lone window.
            let mut want = Vec::new();
            want.extend_from_slice(&small[100..4100]);
            want.extend_from_slice(&big[4096..]);
            want.extend_from_slice(&small[7..9]);
            want.extend_from_slice(&big[1..(1 << 20) + 1]);
            let total = want.len();
            let server = io::spawn_local(async move {
                let conn = l.accept().await.unwrap();
                let (r, buf) = conn.recv_exact_into(IoBuf::zeroed(total), 0..total).await;
                r.unwrap();
                buf
            });
            // SAFETY: plain syscall.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0);
            // SAFETY: fresh descriptor owned by the stream from here on.
            let s = net::Stream::from_fd(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
            io::connect(fd, &addr).await.unwrap();
            let bufs = vec![
                IoBuf::from_slice(&small),
                IoBuf::from_slice(&big),
                IoBuf::with_capacity(0),
                IoBuf::from_slice(&small),
            ];
            let ranges = vec![100..4100, 4096..big.len(), 0..0, 7..9];
            let (r, bufs) = s.send_all_ranges(bufs, ranges, offload).await;
            r.unwrap();
            assert_eq!(bufs.len(), 4, "buffers come back");
            let one = vec![IoBuf::from_slice(&big)];
            let (r, one) = s
                .send_all_ranges(one, vec![1..(1 << 20) + 1], offload)
                .await;
            r.unwrap();
            assert_eq!(one.len(), 1, "the buffer comes back");
            let got = server.await.unwrap();
            assert!(got[..] == want[..], "bytes in order (offload {offload})");
            // A window outside its buffer is refused, not sent.
            let (r, _) = s
                .send_all_ranges(vec![IoBuf::from_slice(&small)], vec![0..6000], offload)
                .await;
            assert!(r.is_err());
        })
        .unwrap();
    }
}

/// The loops that transfer a whole window stop at EOF with how much they did: a socket closed
/// after part of a message, and a file read past its end.
#[test]
fn exact_transfers_report_eof_with_progress() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let path = dir.path().join("sock");
    let file = dir.path().join("file");
    std::fs::write(&file, vec![7u8; 6000]).unwrap();
    io::block_on(&cfg(), async move {
        let l = net::UnixListener::bind(&path).unwrap();
        let server = io::spawn_local(async move {
            let conn = l.accept().await.unwrap();
            // 100 bytes, then close.
            let (r, _) = conn.send_all(IoBuf::from_slice(&[1u8; 100])).await;
            r.unwrap();
        });
        let c = net::Stream::connect_unix(&path).await.unwrap();
        server.await.unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&c);
        let (r, buf) = io::recv_exact_into(fd, IoBuf::zeroed(300), 10..260).await;
        match r {
            Err(IoError::UnexpectedEof {
                op, done, expected, ..
            }) => assert_eq!((op, done, expected), (io::OpKind::Recv, 100, 250)),
            other => panic!("recv past the peer's close: {other:?}"),
        }
        assert_eq!(&buf.as_full_slice()[10..110], &[1u8; 100][..]);
        assert_eq!(
            &buf.as_full_slice()[110..260],
            &[0u8; 150][..],
            "nothing past EOF"
        );

        let f = std::fs::File::open(&file).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let (r, _) = io::read_exact_at(fd, IoBuf::zeroed(4096), 4000).await;
        match r {
            Err(IoError::UnexpectedEof {
                op,
                offset,
                done,
                expected,
            }) => assert_eq!(
                (op, offset, done, expected),
                (io::OpKind::Read, 4000, 2000, 4096)
            ),
            other => panic!("read past the end of the file: {other:?}"),
        }
        let (r, buf) = io::read_exact_at(fd, IoBuf::zeroed(4096), 1000).await;
        r.unwrap();
        assert!(buf.as_full_slice().iter().all(|&b| b == 7));
    })
    .unwrap();
}
