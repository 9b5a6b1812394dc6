//! ringpool engine.
