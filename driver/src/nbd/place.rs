//! Which serving reactor takes a new connection ([`Placement`], [`choose`]), and the CPU its
//! client last ran on ([`client_cpu`]).
//!
//! On the 2-vCPU test box a QD1 request is fast when the client and the connection's reactor
//! hand over on one CPU, and pays a cross-vCPU wake-up (17–23 us of scheduler delay there) each
//! way otherwise (perf/results/README-nbd.md, "QD1 on this VM"). The kernel cannot be told to
//! move the client, but the server can put the connection on the reactor pinned to the CPU the
//! client was just running on.

use std::os::fd::RawFd;
use std::str::FromStr;

use crate::io::net::get_sockopt;

/// How a new connection picks its serving reactor among those with the fewest open
/// connections (the count always comes first, so several connections still spread).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// A reactor in [`super::NbdServerConfig::prefer_reactors`] (the devices' interrupt CPUs),
    /// else the first.
    #[default]
    Irq,
    /// The reactor pinned to the CPU the client last ran on when it connected (TCP:
    /// `SO_INCOMING_CPU`; unix socket: the peer process's last CPU from `/proc`), then as
    /// [`Placement::Irq`]. When the CPU cannot be learnt (unpinned reactors, no `/proc`, a
    /// client already gone) it is [`Placement::Irq`].
    Client,
    /// The first reactor (no preference at all).
    None,
}

impl FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "irq" => Ok(Placement::Irq),
            "client" => Ok(Placement::Client),
            "none" => Ok(Placement::None),
            other => Err(format!("unknown placement '{other}' (irq, client or none)")),
        }
    }
}

/// The slot for a new connection: fewest open connections (`live`), then the client's slot
/// (`client`), then a preferred slot (`preferred`), then the lowest. `live` and `preferred`
/// have one entry per serving reactor.
pub(crate) fn choose(live: &[usize], preferred: &[bool], client: Option<usize>) -> usize {
    (0..live.len())
        .min_by_key(|&i| {
            (
                live[i],
                client != Some(i),
                !preferred.get(i).copied().unwrap_or(false),
                i,
            )
        })
        .unwrap_or(0)
}

/// Whether the accepted socket is TCP or a unix socket (they learn the client's CPU
/// differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Tcp,
    Unix,
}

/// The CPU the client of the accepted socket `fd` last ran on, if it can be learnt.
pub(crate) fn client_cpu(fd: RawFd, family: Family) -> Option<usize> {
    match family {
        // On loopback the receive path of the client's packets runs on the CPU that sent
        // them (the connect's final ACK), which the socket records.
        Family::Tcp => incoming_cpu(fd),
        // A unix socket records no CPU; its peer's process does. fio's nbd engine connects
        // from the job process that then does the I/O, so the process's (main thread's)
        // last CPU is the client's.
        Family::Unix => peer_pid(fd).and_then(last_cpu_of),
    }
}

fn incoming_cpu(fd: RawFd) -> Option<usize> {
    let cpu = get_sockopt(fd, libc::SOL_SOCKET, libc::SO_INCOMING_CPU, -1).ok()?;
    usize::try_from(cpu).ok()
}

fn peer_pid(fd: RawFd) -> Option<i32> {
    let none = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let cred = get_sockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, none).ok()?;
    (cred.pid > 0).then_some(cred.pid)
}

fn last_cpu_of(pid: i32) -> Option<usize> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu(&stat)
}

/// Field 39 (`processor`) of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted after the
/// last ')'.
fn stat_cpu(stat: &str) -> Option<usize> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the ')' come field 3 (state) onwards: field 39 is the 37th of them.
    rest.split_ascii_whitespace().nth(36)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_comes_first_then_the_client_then_the_preference() {
        // A lone client goes to its CPU's reactor, over the preferred one.
        assert_eq!(choose(&[0, 0], &[false, true], Some(0)), 0);
        assert_eq!(choose(&[0, 0], &[true, false], Some(1)), 1);
        // Without a client CPU: the preferred one, else the first.
        assert_eq!(choose(&[0, 0], &[false, true], None), 1);
        assert_eq!(choose(&[0, 0, 0], &[false; 3], None), 0);
        // A busier reactor never wins, even on the client's CPU.
        assert_eq!(choose(&[1, 0], &[false, false], Some(0)), 1);
        assert_eq!(choose(&[2, 1, 1], &[false, false, true], Some(0)), 2);
        // Among equally busy reactors the client's wins, among the rest the preferred one.
        assert_eq!(choose(&[1, 1, 2], &[true, false, false], Some(1)), 1);
        assert_eq!(choose(&[1, 1, 2], &[false, true, false], Some(2)), 1);
        // A client slot out of range (not a serving reactor) changes nothing.
        assert_eq!(choose(&[0, 0], &[false, true], Some(7)), 1);
        assert_eq!(choose(&[], &[], Some(0)), 0);
    }

    #[test]
    fn connections_of_one_client_still_spread() {
        // nbdcopy's 4 connections come from one process on one CPU: two per reactor, the odd
        // ones on the client's reactor.
        let mut live = [0usize; 2];
        let mut order = Vec::new();
        for _ in 0..4 {
            let k = choose(&live, &[false, true], Some(0));
            live[k] += 1;
            order.push(k);
        }
        assert_eq!(order, [0, 1, 0, 1]);
        assert_eq!(live, [2, 2]);
    }

    #[test]
    fn placement_names() {
        assert_eq!("client".parse(), Ok(Placement::Client));
        assert_eq!(" irq\n".parse(), Ok(Placement::Irq));
        assert_eq!("none".parse(), Ok(Placement::None));
        assert!("cpu".parse::<Placement>().is_err());
    }

    #[test]
    fn the_processor_field_of_a_stat_line() {
        let line = "4242 (fio) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 100 1000 10 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(stat_cpu(line), Some(1));
        // A command name with spaces and a ')' does not shift the fields.
        let odd = line.replace("(fio)", "(a) b (c)");
        assert_eq!(stat_cpu(&odd), Some(1));
        assert_eq!(stat_cpu("4242 (fio) S 1"), None);
        assert_eq!(stat_cpu(""), None);
    }

    #[test]
    fn this_process_is_on_some_cpu() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let cpu = stat_cpu(&stat).expect("processor field");
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The CPU numbers of an online set may have gaps, but not beyond the configured ones.
        // SAFETY: sysconf has no memory arguments.
        let conf = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) })
            .unwrap_or(n)
            .max(n);
        assert!(cpu < conf, "cpu {cpu} of {conf}");
    }
}
