//! A request body with a deadline and a minimum rate: hyper's header-read
//! timeout ends with the headers, so a client that sends a large
//! `Content-Length` and then a byte every few seconds would otherwise hold
//! its connection (and its buffers) forever. After a grace period the body
//! must have arrived at the minimum rate on average, and all of it within
//! the body timeout; a body that falls behind ends with [`SlowBody`], which
//! handlers answer 408 and hyper follows by closing the connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Chunks smaller than this are copied out of hyper's read buffer.
const SMALL_CHUNK: usize = 4 << 10;

/// A small chunk, copied: hyper hands out body chunks as slices of its 8 KiB
/// read buffer, so a handler collecting a trickled body byte by byte would
/// keep a whole buffer alive per byte (about 30 KiB per slow connection).
fn unpin_small(data: Bytes) -> Bytes {
    if data.len() < SMALL_CHUNK {
        Bytes::copy_from_slice(&data)
    } else {
        data
    }
}

/// How fast a body must arrive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) grace: Duration,
    /// Bytes per second; 0: no rate check, only the timeout.
    pub(crate) min_rate: u64,
    pub(crate) timeout: Duration,
}

impl Pace {
    /// When a body that started at `start` and has `received` bytes so far
    /// falls behind.
    fn deadline(&self, start: Instant, received: u64) -> Instant {
        let whole = start + self.timeout;
        if self.min_rate == 0 {
            return whole;
        }
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        whole.min(start + self.grace + earned)
    }
}

/// The body arrived too slowly.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body arrived too slowly: {received} bytes in {elapsed:?} (at least {min_rate} bytes/s after {grace:?}, all within {timeout:?})"
)]
pub(crate) struct SlowBody {
    pub(crate) received: u64,
    pub(crate) elapsed: Duration,
    pub(crate) min_rate: u64,
    pub(crate) grace: Duration,
    pub(crate) timeout: Duration,
}

/// `inner`, cut with [`SlowBody`] when it falls behind its [`Pace`];
/// `on_cut` is told once, with the reason.
pub(crate) struct PacedBody<B> {
    inner: B,
    pace: Pace,
    start: Instant,
    received: u64,
    /// Set when the body first has to wait for data.
    timer: Option<Pin<Box<Sleep>>>,
    /// The whole body arrived (or it was cut): no more deadline.
    finished: bool,
    on_cut: Option<OnCut>,
}

/// Told once when a body is cut, with the reason.
pub(crate) type OnCut = Box<dyn FnOnce(&SlowBody) + Send>;

impl<B> PacedBody<B> {
    pub(crate) fn new(inner: B, pace: Pace, on_cut: OnCut) -> PacedBody<B> {
        PacedBody {
            inner,
            pace,
            start: Instant::now(),
            received: 0,
            timer: None,
            finished: false,
            on_cut: Some(on_cut),
        }
    }
}

impl<B> Body for PacedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.finished {
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = frame.map_data(unpin_small);
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let deadline = this.pace.deadline(this.start, this.received);
                    if let Some(timer) = this.timer.as_mut() {
                        timer.as_mut().reset(deadline);
                    }
                }
                if this.inner.is_end_stream() {
                    this.finished = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Pending => {
                let (pace, start, received) = (this.pace, this.start, this.received);
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(pace.deadline(start, received)))
                });
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.finished = true;
                let slow = SlowBody {
                    received,
                    elapsed: start.elapsed(),
                    min_rate: pace.min_rate,
                    grace: pace.grace,
                    timeout: pace.timeout,
                };
                if let Some(on_cut) = this.on_cut.take() {
                    on_cut(&slow);
                }
                Poll::Ready(Some(Err(Box::new(slow))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `err` (or one of its causes) is a [`SlowBody`].
pub(crate) fn is_slow_body(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if err.is::<SlowBody>() {
            return true;
        }
        cause = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body as AxumBody;
    use futures_util::StreamExt;

    use super::*;

    const PACE: Pace = Pace {
        grace: Duration::from_secs(5),
        min_rate: 100,
        timeout: Duration::from_secs(60),
    };

    /// A body fed by hand through a channel, one chunk per send.
    fn channel_body() -> (
        tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
        AxumBody,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream = tokio_stream_from(rx);
        (tx, AxumBody::from_stream(stream))
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// Sends `chunk` every `every` until the body (read from `stream`) is
    /// cut, and returns the error it was cut with.
    async fn feed_until_cut(
        tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
        stream: &mut axum::body::BodyDataStream,
        chunk: &'static [u8],
        every: Duration,
    ) -> axum::Error {
        let feeder = tokio::spawn(async move {
            while tx.send(Ok(Bytes::from_static(chunk))).await.is_ok() {
                tokio::time::sleep(every).await;
            }
        });
        let err = loop {
            match stream.next().await {
                Some(Ok(_)) => {}
                Some(Err(err)) => break err,
                None => panic!("the body ended without a cut"),
            }
        };
        feeder.abort();
        err
    }

    fn paced(body: AxumBody, cuts: Arc<AtomicUsize>) -> AxumBody {
        AxumBody::new(PacedBody::new(
            body,
            PACE,
            Box::new(move |_| {
                cuts.fetch_add(1, Ordering::SeqCst);
            }),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_is_cut_after_the_grace_period() {
        let (tx, body) = channel_body();
        let cuts = Arc::new(AtomicUsize::new(0));
        let mut stream = paced(body, cuts.clone()).into_data_stream();
        let started = Instant::now();
        let err = feed_until_cut(tx, &mut stream, b"x", Duration::from_secs(2)).await;
        assert!(is_slow_body(&err), "{err}");
        let elapsed = started.elapsed();
        // 5 s of grace plus 10 ms per byte earned (a few bytes).
        assert!(
            elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(6),
            "cut after {elapsed:?}"
        );
        assert_eq!(cuts.load(Ordering::SeqCst), 1, "told once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_rate_passes_and_a_finished_one_has_no_deadline() {
        let (tx, body) = channel_body();
        let cuts = Arc::new(AtomicUsize::new(0));
        let mut stream = paced(body, cuts.clone()).into_data_stream();
        // 200 bytes/s for 20 s: twice the minimum.
        let feeder = tokio::spawn(async move {
            for _ in 0..20 {
                tx.send(Ok(Bytes::from(vec![b'y'; 200])))
                    .await
                    .expect("send");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut total = 0;
        while let Some(chunk) = stream.next().await {
            total += chunk.expect("not cut").len();
        }
        feeder.await.expect("feeder");
        assert_eq!(total, 4000);
        assert_eq!(cuts.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_whole_body_has_a_timeout_even_at_the_rate() {
        let (tx, body) = channel_body();
        let mut stream = paced(body, Arc::default()).into_data_stream();
        let started = Instant::now();
        let err = feed_until_cut(tx, &mut stream, &[b'z'; 1000], Duration::from_secs(1)).await;
        assert!(is_slow_body(&err));
        assert!(started.elapsed() >= PACE.timeout, "{:?}", started.elapsed());
    }
}
