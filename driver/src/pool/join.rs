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
