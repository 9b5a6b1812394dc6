//! Operations in flight per file on one ring, counted by the write aggregator (its window of
//! writes per file) and the read window (its reads per file). A ring drives a handful of files,
//! so a short vector beats a map.

use crate::io::ops::FileRef;

/// Counts of in-flight operations per file; files with none are not kept.
#[derive(Debug, Default)]
pub(super) struct PerFile {
    counts: Vec<(FileRef, usize)>,
}

impl PerFile {
    /// Operations of `fd` in flight.
    pub(super) fn get(&self, fd: FileRef) -> usize {
        self.counts
            .iter()
            .find(|(f, _)| *f == fd)
            .map_or(0, |&(_, n)| n)
    }

    /// One more operation of `fd` went to the kernel.
    pub(super) fn add(&mut self, fd: FileRef) {
        match self.counts.iter_mut().find(|(f, _)| *f == fd) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((fd, 1)),
        }
    }

    /// An operation of `fd` completed.
    pub(super) fn done(&mut self, fd: FileRef) {
        if let Some(i) = self.counts.iter().position(|(f, _)| *f == fd) {
            self.counts[i].1 = self.counts[i].1.saturating_sub(1);
            if self.counts[i].1 == 0 {
                self.counts.swap_remove(i);
            }
        }
    }
}
