//! A minimal `join_all`: run many futures of the same task concurrently (the sync thread issues
//! every tree-block write of a pass at once; the ring batches them).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Future of [`join_all`].
pub struct JoinAll<'a, T> {
    futs: Vec<Option<BoxFut<'a, T>>>,
    out: Vec<Option<T>>,
}

impl<T> std::fmt::Debug for JoinAll<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinAll")
            .field("n", &self.futs.len())
            .finish()
    }
}

/// Polls every future until all are done; outputs in input order.
pub fn join_all<'a, T, F>(futs: impl IntoIterator<Item = F>) -> JoinAll<'a, T>
where
    F: Future<Output = T> + 'a,
{
    let futs: Vec<Option<BoxFut<'a, T>>> = futs
        .into_iter()
        .map(|f| Some(Box::pin(f) as BoxFut<'a, T>))
        .collect();
    let out = futs.iter().map(|_| None).collect();
    JoinAll { futs, out }
}

// The futures are boxed (pinned on the heap) and outputs are plain values: moving the
// struct never moves a pinned future.
impl<T> Unpin for JoinAll<'_, T> {}

impl<T> Future for JoinAll<'_, T> {
    type Output = Vec<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<T>> {
        let this = self.get_mut();
        let mut pending = false;
        for (slot, out) in this.futs.iter_mut().zip(this.out.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(this.out.iter_mut().filter_map(Option::take).collect())
    }
}

/// Runs `futs` at most `width` at a time (bounded memory and queue depth), returning the first
/// error after all started ones finished.
pub async fn try_join_chunks<'a, E, F>(futs: Vec<F>, width: usize) -> Result<(), E>
where
    F: Future<Output = Result<(), E>> + 'a,
{
    let mut first_err = None;
    let mut it = futs.into_iter().peekable();
    while it.peek().is_some() {
        let batch: Vec<F> = it.by_ref().take(width.max(1)).collect();
        for r in join_all(batch).await {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Future of [`join_window`].
pub struct JoinWindow<'a, T> {
    queued: std::vec::IntoIter<BoxFut<'a, T>>,
    running: Vec<BoxFut<'a, T>>,
    out: Vec<T>,
    width: usize,
    /// Asked for the width again before every refill (see [`join_window_adaptive`]).
    adapt: Option<Box<dyn FnMut() -> usize + 'a>>,
}

impl<T> std::fmt::Debug for JoinWindow<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinWindow")
            .field("queued", &self.queued.len())
            .field("running", &self.running.len())
            .field("width", &self.width)
            .finish()
    }
}

/// Runs `futs` keeping up to `width` in flight: a finished one is replaced at once (unlike
/// [`try_join_chunks`], which waits for the slowest of each chunk), so the device queue stays
/// deep for the whole batch. Outputs come in completion order.
pub fn join_window<'a, T, F>(futs: Vec<F>, width: usize) -> JoinWindow<'a, T>
where
    F: Future<Output = T> + 'a,
{
    let n = futs.len();
    let queued: Vec<BoxFut<'a, T>> = futs
        .into_iter()
        .map(|f| Box::pin(f) as BoxFut<'a, T>)
        .collect();
    JoinWindow {
        queued: queued.into_iter(),
        running: Vec::new(),
        out: Vec::with_capacity(n),
        width: width.max(1),
        adapt: None,
    }
}

/// [`join_window`] whose width is asked of `width` again before every refill, so a long
/// batch follows a changing budget (the sync's tree-block writes follow how fast the open txg
/// fills: few in flight while writers are light, many when the sync must hurry).
pub fn join_window_adaptive<'a, T, F>(
    futs: Vec<F>,
    mut width: impl FnMut() -> usize + 'a,
) -> JoinWindow<'a, T>
where
    F: Future<Output = T> + 'a,
{
    let first = width();
    let mut w = join_window(futs, first);
    w.adapt = Some(Box::new(width));
    w
}

// As for JoinAll: the futures are boxed, so moving the struct moves no pinned future.
impl<T> Unpin for JoinWindow<'_, T> {}

impl<T> Future for JoinWindow<'_, T> {
    type Output = Vec<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<T>> {
        let this = self.get_mut();
        loop {
            if let Some(adapt) = this.adapt.as_mut() {
                this.width = adapt().max(1);
            }
            while this.running.len() < this.width {
                match this.queued.next() {
                    Some(f) => this.running.push(f),
                    None => break,
                }
            }
            if this.running.is_empty() {
                return Poll::Ready(std::mem::take(&mut this.out));
            }
            let mut finished = false;
            let mut i = 0;
            while i < this.running.len() {
                match this.running[i].as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        this.out.push(v);
                        drop(this.running.swap_remove(i));
                        finished = true;
                    }
                    Poll::Pending => i += 1,
                }
            }
            // Freed slots are refilled (and the new futures polled) before yielding.
            if !finished || this.queued.len() == 0 && !this.running.is_empty() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_runs_everything_with_bounded_width() {
        use std::cell::Cell;
        let live = Cell::new(0usize);
        let peak = Cell::new(0usize);
        let futs: Vec<_> = (0..50u32)
            .map(|i| {
                let (live, peak) = (&live, &peak);
                async move {
                    live.set(live.get() + 1);
                    peak.set(peak.get().max(live.get()));
                    // Finish after a number of polls that varies by future.
                    for _ in 0..=(i % 7) {
                        crate::io::yield_now().await;
                    }
                    live.set(live.get() - 1);
                    i
                }
            })
            .collect();
        let cfg = crate::io::ReactorConfig::default();
        let mut out = crate::io::block_on(&cfg, join_window(futs, 8)).unwrap();
        out.sort_unstable();
        assert_eq!(out, (0..50).collect::<Vec<_>>());
        assert_eq!(peak.get(), 8, "the window is kept full and never exceeded");
    }
}
