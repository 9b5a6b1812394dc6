//! A CPU wake-up latency bound held while `ringpool serve` runs (`--cpu-latency-us`).
//!
//! Why: an idle CPU waits for work in an idle state, and the deeper the state the longer it
//! takes to run the thread an interrupt or a wake-up is for. On a VM the deepest state is a
//! halted vCPU, which the host must schedule again: on the 2-vCPU test box a wake-up across
//! vCPUs costs 17-23 us (perf/results/README-nbd.md, "QD1 on this VM"), and a read at queue
//! depth 1 over NBD pays up to three of them (the reactor after the client's request and after
//! the device read, the client after the reply) where fio on the raw file pays one. Writing a
//! bound in microseconds to `/dev/cpu_dma_latency`, the kernel's PM QoS interface (what the
//! `latency-performance` profile of tuned does), keeps every CPU out of idle states that take
//! longer than that to leave; 0 makes an idle CPU poll instead of halting.
//!
//! The request is the open file: it holds while the file stays open and the kernel drops it
//! when the process exits, however it exits. The kernel applies the smallest bound any
//! process holds, machine-wide.
//!
//! Cost: idle CPUs stay awake (power; on a VM, host CPU time while the guest is idle), for
//! every process on the machine. Hence off unless asked for.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};

/// The kernel's PM QoS CPU latency interface (root only).
pub const PATH: &str = "/dev/cpu_dma_latency";

/// A held latency bound; dropping it (closing the file) releases it.
#[derive(Debug)]
pub struct CpuLatencyRequest {
    _file: File,
}

impl CpuLatencyRequest {
    /// Asks the kernel to keep every CPU's wake-up latency within `us` microseconds until
    /// the request is dropped.
    pub fn hold(us: u32) -> io::Result<CpuLatencyRequest> {
        let value = i32::try_from(us)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "latency out of range"))?;
        let mut file = OpenOptions::new().write(true).open(PATH)?;
        // The binary form: one native-endian s32 (an ASCII hex string is the other).
        file.write_all(&value.to_ne_bytes())?;
        Ok(CpuLatencyRequest { _file: file })
    }
}

/// The bound the kernel applies now (the smallest of all held requests, or its default of
/// 2000 s when there is none), in microseconds.
pub fn current() -> io::Result<i32> {
    let mut b = [0u8; 4];
    File::open(PATH)?.read_exact(&mut b)?;
    Ok(i32::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A held request is what the kernel applies, and dropping it releases it. Needs root
    /// (the device is root-only): skipped otherwise, and when another process already holds
    /// a bound this small.
    #[test]
    fn a_held_bound_applies_until_dropped() {
        let Ok(before) = current() else {
            eprintln!("SKIP: cannot read {PATH} (not root, or no PM QoS)");
            return;
        };
        let ask = 3;
        if before <= ask {
            eprintln!("SKIP: another process holds a bound of {before} us");
            return;
        }
        let req = CpuLatencyRequest::hold(3).expect("hold");
        assert_eq!(current().expect("read"), ask);
        drop(req);
        assert_eq!(current().expect("read"), before);
    }

    #[test]
    fn a_bound_beyond_i32_is_refused_before_anything_is_opened() {
        let e = CpuLatencyRequest::hold(u32::MAX).expect_err("out of range");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
