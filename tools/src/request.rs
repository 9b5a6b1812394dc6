//! What a command asks of a pool, and what it gets back.
//!
//! One path for both ways a command reaches a pool: a [`Request`] is executed either on a pool
//! this process opened itself, or sent as one JSON line over the control socket of the `serve`
//! that holds the pool, which executes it the same way and answers with one JSON line.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Names of the pools the receiver holds.
    Pools,
    Status {
        pool: String,
    },
    List {
        pool: String,
    },
    Get {
        pool: String,
        property: String,
    },
    Set {
        pool: String,
        property: String,
        value: String,
    },
    Add {
        pool: String,
        devices: Vec<String>,
    },
    VolumeCreate {
        pool: String,
        volume: String,
        size: u64,
        block_size: u32,
    },
    VolumeDestroy {
        pool: String,
        volume: String,
    },
    VolumeList {
        pool: String,
    },
    VolumeResize {
        pool: String,
        volume: String,
        size: u64,
    },
    History {
        pool: String,
    },
    Verify {
        pool: String,
    },
    Checkpoint {
        pool: String,
    },
    DiscardCheckpoint {
        pool: String,
        /// Return only once the discard has finished.
        #[serde(default)]
        wait: bool,
    },
    /// Block until no checkpoint is being discarded.
    WaitDiscard {
        pool: String,
    },
    /// Stop serving the pool, sync it and mark its labels exported.
    Export {
        pool: String,
    },
    /// Every metaslab of every device (`inspect metaslabs`).
    Metaslabs {
        pool: String,
    },
    /// One space map, header and records (`inspect spacemap`): a metaslab's, or with
    /// `metaslab: None` the device's checkpoint space map.
    SpaceMap {
        pool: String,
        device: u32,
        metaslab: Option<u64>,
    },
    /// Give the pool a new GUID (refused while a checkpoint exists).
    Reguid {
        pool: String,
    },
    /// Reset the devices' error counters.
    Clear {
        pool: String,
    },
    /// `serve` opens a pool the state directory just learned about (create, import) and
    /// exports its volumes.
    Open {
        pool: String,
    },
}

impl Request {
    /// The pool the request is about, when it is about one.
    pub fn pool(&self) -> Option<&str> {
        match self {
            Request::Pools => None,
            Request::Status { pool }
            | Request::List { pool }
            | Request::Get { pool, .. }
            | Request::Set { pool, .. }
            | Request::Add { pool, .. }
            | Request::VolumeCreate { pool, .. }
            | Request::VolumeDestroy { pool, .. }
            | Request::VolumeList { pool }
            | Request::VolumeResize { pool, .. }
            | Request::History { pool }
            | Request::Verify { pool }
            | Request::Checkpoint { pool }
            | Request::DiscardCheckpoint { pool, .. }
            | Request::WaitDiscard { pool }
            | Request::Export { pool }
            | Request::Metaslabs { pool }
            | Request::SpaceMap { pool, .. }
            | Request::Reguid { pool }
            | Request::Clear { pool }
            | Request::Open { pool } => Some(pool),
        }
    }
}

/// The answer: a JSON value, or an error message in OpenZFS's wording. A long request
/// (`verify`) may send `Progress` lines before its final answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok { value: Value },
    Error { message: String },
    Progress(Progress),
}

/// How far a long request has come: `done` of `total` (bytes checked by `verify`, bytes
/// released by a checkpoint discard).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json_lines() {
        let req = Request::VolumeCreate {
            pool: "tank".into(),
            volume: "vol0".into(),
            size: 1 << 30,
            block_size: 4096,
        };
        let line = serde_json::to_string(&req).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
        assert_eq!(req.pool(), Some("tank"));
    }
}
