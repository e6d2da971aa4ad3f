//! How long a request waited for its on-demand model to load, for its answer's `Server-Timing` header: a
//! client (or a benchmark) can tell a cold answer from a warm one without guessing from its latency.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

tokio::task_local! {
    static LOAD_WAIT: Cell<Option<Duration>>;
}

/// Runs `request` (a handler), and gives its output with the time it waited for a model's load, if it did.
pub async fn recording<F: Future>(request: F) -> (F::Output, Option<Duration>) {
    LOAD_WAIT
        .scope(Cell::new(None), async move {
            let output = request.await;
            (output, LOAD_WAIT.with(Cell::get))
        })
        .await
}

/// The request being handled waited `wait` for its model to load; nothing outside `recording` (gRPC).
pub(super) fn record(wait: Duration) {
    let _ = LOAD_WAIT.try_with(|recorded| recorded.set(Some(wait)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recorded_wait_comes_back_with_the_output() {
        let (output, wait) = recording(async {
            record(Duration::from_millis(250));
            7
        })
        .await;
        assert_eq!((output, wait), (7, Some(Duration::from_millis(250))));
        assert_eq!(recording(async { 7 }).await.1, None, "no load, no wait");
        record(Duration::from_secs(1)); // outside any request: ignored, no panic
    }
}
