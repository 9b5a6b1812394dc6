//! ringperf: a latency benchmark for ringpool's layers and for any NBD server.
//!
//! A run is `jobs` reactor threads (pinned), each keeping `qd` I/Os in flight against a
//! [`target`] with a seeded [`workload`]; latencies go into HdrHistograms ([`stats`]), one line
//! per second ([`intervals`]), and a bdevperf-like table or JSON at the end ([`report`]).

pub mod cli;
pub mod compare;
pub mod error;
pub mod intervals;
pub mod plot;
pub mod report;
pub mod runner;
pub mod stats;
pub mod target;
pub mod units;
pub mod verify;
pub mod workload;
