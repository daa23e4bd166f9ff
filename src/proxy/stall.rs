//! A forwarded body that stops moving is cut: `upstream.body_timeout` bounds the pause between
//! two frames of a client's request body on its way up and of the upstream's answer on its way
//! down, so neither side can hold a request (and a connection on both sides) open by going
//! quiet halfway through a body.
//!
//! The timer is armed only when the body has nothing to give: a body whose frames are already
//! there when asked for (most answers of a nearby upstream) costs no timer at all.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::BoxError;

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the body stalled: nothing for {0:?}")]
pub struct BodyStalled(pub Duration);

/// `B`, ended with [`BodyStalled`] once it has had nothing to give for `stall`.
pub struct Stalled<B> {
    inner: B,
    stall: Duration,
    /// Armed when `inner` last returned pending with nothing armed; cleared by every frame.
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl<B> Stalled<B> {
    pub fn new(inner: B, stall: Duration) -> Self {
        Stalled {
            inner,
            stall,
            timer: None,
            waiting: false,
        }
    }
}

impl<B> HttpBody for Stalled<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = Instant::now() + this.stall;
                let timer = match &mut this.timer {
                    Some(timer) if this.waiting => timer,
                    Some(timer) => {
                        timer.as_mut().reset(deadline);
                        timer
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                this.waiting = true;
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(this.stall))))),
                    Poll::Pending => Poll::Pending,
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn a_body_quiet_for_longer_than_the_stall_ends_with_an_error() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let mut body = Stalled::new(
            StreamBody::new(Box::pin(stream)),
            Duration::from_millis(300),
        );
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .expect("send");
        let first = body.frame().await.expect("frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"a")));
        // Quiet, but for less than the stall: the next frame still comes through.
        let feeder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"b"))))
                .await
                .expect("send");
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(tx);
        });
        assert!(body.frame().await.expect("frame").is_ok());
        let stalled = body.frame().await.expect("an error").expect_err("stalled");
        assert!(stalled.is::<BodyStalled>(), "{stalled}");
        feeder.abort();
    }
}
