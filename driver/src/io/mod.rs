//! Per-core io_uring reactors, buffers, devices and I/O engines.
