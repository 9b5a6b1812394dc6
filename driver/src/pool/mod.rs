//! The pool: labels, uberblocks, txgs, the CoW object store, volumes, checkpoints.
