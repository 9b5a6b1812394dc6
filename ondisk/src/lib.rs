//! ringpool on-disk formats.
