//! ringpool allocator.
