//! A response body that streams to the client unchanged while keeping a bounded copy.
//!
//! The end of the stream is held back until the copy has been handed over and processed, so by
//! the time a client has the whole `201`, its tokens are already recorded: a client that uses a
//! token the instant it arrives is never told the token is unknown.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

/// Why the copy is not the whole body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incomplete {
    /// Larger than the cap; copying stopped, streaming did not.
    TooLarge,
    /// The upstream's body broke off, or the client went away before the end.
    CutOff,
}

/// What receives the copy.
pub trait TeeSink: Send + 'static {
    /// The whole body. The end of the stream reaches the client once the future completes.
    fn complete(self: Box<Self>, body: Bytes) -> Pin<Box<dyn Future<Output = ()> + Send>>;
    /// The body was not copied whole.
    fn incomplete(self: Box<Self>, why: Incomplete);
}

enum State {
    /// Passing frames through and copying.
    Streaming {
        copy: Option<BytesMut>,
        sink: Option<Box<dyn TeeSink>>,
    },
    /// The body is complete; waiting for the sink before releasing `held` (the last data
    /// frame, or `None` for the end of the stream).
    Handing {
        work: Pin<Box<dyn Future<Output = ()> + Send>>,
        held: Option<Frame<Bytes>>,
    },
    /// Copy handed over or abandoned: plain pass-through.
    Done,
}

/// The teeing body.
pub struct TeeBody<B> {
    inner: B,
    cap: usize,
    state: State,
}

impl<B> TeeBody<B> {
    /// Tees `inner`, copying at most `cap` bytes into `sink`.
    pub fn new(inner: B, cap: usize, sink: Box<dyn TeeSink>) -> Self {
        TeeBody {
            inner,
            cap,
            state: State::Streaming {
                copy: Some(BytesMut::new()),
                sink: Some(sink),
            },
        }
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Done => return Pin::new(&mut this.inner).poll_frame(cx),
                State::Handing { work, held } => {
                    ready!(work.as_mut().poll(cx));
                    let held = held.take();
                    this.state = State::Done;
                    return Poll::Ready(held.map(Ok));
                }
                State::Streaming { copy, sink } => {
                    match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            if let (Some(buffer), Some(data)) = (copy.as_mut(), frame.data_ref()) {
                                if buffer.len() + data.len() > this.cap {
                                    *copy = None;
                                    if let Some(sink) = sink.take() {
                                        sink.incomplete(Incomplete::TooLarge);
                                    }
                                } else {
                                    buffer.extend_from_slice(data);
                                }
                            }
                            // A server may stop polling once the body says it has ended, so
                            // the last frame itself waits for the hand-over.
                            if this.inner.is_end_stream() {
                                if let (Some(buffer), Some(sink)) = (copy.take(), sink.take()) {
                                    this.state = State::Handing {
                                        work: sink.complete(buffer.freeze()),
                                        held: Some(frame),
                                    };
                                    continue;
                                }
                            }
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        Some(Err(error)) => {
                            if let Some(sink) = sink.take() {
                                sink.incomplete(Incomplete::CutOff);
                            }
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(error)));
                        }
                        None => {
                            if let (Some(buffer), Some(sink)) = (copy.take(), sink.take()) {
                                this.state = State::Handing {
                                    work: sink.complete(buffer.freeze()),
                                    held: None,
                                };
                                continue;
                            }
                            this.state = State::Done;
                            return Poll::Ready(None);
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            State::Done => self.inner.is_end_stream(),
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for TeeBody<B> {
    fn drop(&mut self) {
        if let State::Streaming { sink, .. } = &mut self.state {
            if let Some(sink) = sink.take() {
                sink.incomplete(Incomplete::CutOff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl TeeSink for Seen {
        fn complete(self: Box<Self>, body: Bytes) -> Pin<Box<dyn Future<Output = ()> + Send>> {
            Box::pin(async move {
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("complete {}", body.len()));
            })
        }
        fn incomplete(self: Box<Self>, why: Incomplete) {
            self.0.lock().unwrap().push(format!("{why:?}"));
        }
    }

    /// A tiny stream over a vector, to avoid a dependency just for tests.
    mod futures_iter {
        use super::*;
        pub struct Iter(pub std::collections::VecDeque<Result<Frame<Bytes>, Infallible>>);
        impl Unpin for Iter {}
        impl http_body::Body for Iter {
            type Data = Bytes;
            type Error = Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
                Poll::Ready(self.0.pop_front())
            }
        }
    }

    #[tokio::test]
    async fn streams_unchanged_and_hands_over_the_copy() {
        let seen = Seen::default();
        let body = TeeBody::new(
            Full::new(Bytes::from_static(b"hello")),
            10,
            Box::new(seen.clone()),
        );
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(*seen.0.lock().unwrap(), ["complete 5"]);
    }

    #[tokio::test]
    async fn over_the_cap_still_streams_but_is_not_handed_over() {
        let seen = Seen::default();
        let body = TeeBody::new(
            futures_iter::Iter(
                ["abcd", "efgh", "ijkl"]
                    .iter()
                    .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
                    .collect(),
            ),
            10,
            Box::new(seen.clone()),
        );
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdefghijkl");
        assert_eq!(*seen.0.lock().unwrap(), ["TooLarge"]);
    }

    #[tokio::test]
    async fn dropped_early_is_cut_off() {
        let seen = Seen::default();
        let body = TeeBody::new(
            Full::new(Bytes::from_static(b"x")),
            10,
            Box::new(seen.clone()),
        );
        drop(body);
        assert_eq!(*seen.0.lock().unwrap(), ["CutOff"]);
    }
}
