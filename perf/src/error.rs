//! ringperf's error type.

use std::io;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PerfError {
    /// Bad command line or a workload that does not fit the target.
    #[error("{0}")]
    Config(String),
    /// Opening, probing or preparing the target failed.
    #[error("target {target}: {source}")]
    Target {
        target: String,
        #[source]
        source: io::Error,
    },
    /// The reactors could not be started.
    #[error("reactors: {0}")]
    Reactor(#[from] ringpool_driver::io::IoError),
    /// A job died (setup failed or it panicked).
    #[error("job {job}: {msg}")]
    Job { job: u32, msg: String },
    /// Writing a report file failed.
    #[error("{path}: {source}")]
    Output {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl PerfError {
    pub fn target(target: &str, source: io::Error) -> PerfError {
        PerfError::Target {
            target: target.to_string(),
            source,
        }
    }
}

/// Converts a driver error into a std one, keeping the errno and the message.
pub fn io_err(e: &ringpool_driver::io::IoError) -> io::Error {
    let os = io::Error::from_raw_os_error(e.errno());
    io::Error::new(os.kind(), e.to_string())
}
