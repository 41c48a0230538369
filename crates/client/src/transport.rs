//! The gRPC transport under [`ApiClient`](liftbridge_proto::api::api_client::ApiClient): tonic's
//! channel, with request bodies that say they have ended as soon as they have.
//!
//! tonic's request body learns that it has ended only when it is polled once more after its
//! last message. The HTTP/2 layer therefore sends a unary request as three frames, each
//! flushed on its own: HEADERS, a DATA frame with the message, and an empty DATA frame that
//! ends the stream. The server cannot start a unary call before the end of the stream, so the
//! third TCP segment is on the critical path of every call. [`EndsEarly`] looks one frame
//! ahead, so that the last DATA frame carries END_STREAM itself: a unary request goes out as
//! two frames.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};

/// A connection to one broker.
pub(crate) type Conn = liftbridge_proto::api::api_client::ApiClient<Transport>;

/// Connects to `endpoint`.
///
/// # Errors
/// The connection's error.
pub(crate) async fn connect(endpoint: Endpoint) -> Result<Conn, tonic::transport::Error> {
    let channel = endpoint.connect().await?;
    Ok(Conn::new(Transport(channel)))
}

/// tonic's channel, whose request bodies are wrapped in [`EndsEarly`].
#[derive(Clone, Debug)]
pub(crate) struct Transport(Channel);

type Request = http::Request<Body>;

impl tower_service::Service<Request> for Transport {
    type Response = <Channel as tower_service::Service<Request>>::Response;
    type Error = <Channel as tower_service::Service<Request>>::Error;
    type Future = <Channel as tower_service::Service<Request>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.0.call(req.map(|b| Body::new(EndsEarly::new(b))))
    }
}

/// A body that polls its inner body one frame ahead, when that frame is ready, so that
/// [`is_end_stream`](HttpBody::is_end_stream) is true right after the last frame.
///
/// Frames and errors come out in the inner body's order; only the moment the inner body is
/// polled changes. A look-ahead that is not ready yet is simply polled again next time.
pub(crate) struct EndsEarly<B: HttpBody> {
    inner: B,
    /// The frame or error read ahead, not yet handed out.
    ahead: Option<Result<Frame<B::Data>, B::Error>>,
    /// The inner body has returned its end.
    ended: bool,
}

impl<B: HttpBody> EndsEarly<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            ahead: None,
            ended: false,
        }
    }
}

impl<B> HttpBody for EndsEarly<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let next = match this.ahead.take() {
            Some(next) => next,
            None if this.ended => return Poll::Ready(None),
            None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(next) => next,
                None => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
            },
        };
        // After an error the inner body is not polled again.
        if next.is_ok() && !this.ended {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(after)) => this.ahead = Some(after),
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => {}
            }
        }
        Poll::Ready(Some(next))
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(Ok(frame)) = &self.ahead {
            let ahead = frame.data_ref().map_or(0, |d| d.len() as u64);
            hint.set_lower(hint.lower().saturating_add(ahead));
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(ahead));
            }
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::task::Waker;

    type Step = Poll<Option<Result<Frame<Bytes>, &'static str>>>;

    /// A body that hands out scripted polls: a frame, an error, not ready yet, or the end.
    #[derive(Default)]
    struct Script {
        polls: VecDeque<Step>,
        polled: usize,
    }

    impl HttpBody for Script {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            self.polled += 1;
            self.polls.pop_front().unwrap_or(Poll::Ready(None))
        }
    }

    fn data(s: &'static str) -> Step {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(s.as_bytes())))))
    }

    fn body(polls: Vec<Step>) -> EndsEarly<Script> {
        EndsEarly::new(Script {
            polls: polls.into(),
            polled: 0,
        })
    }

    /// What one poll of `b` gives: the data as text, "error: …", "pending" or "end".
    fn next(b: &mut EndsEarly<Script>) -> String {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(b).poll_frame(&mut cx) {
            Poll::Pending => "pending".into(),
            Poll::Ready(None) => "end".into(),
            Poll::Ready(Some(Err(e))) => format!("error: {e}"),
            Poll::Ready(Some(Ok(f))) => {
                String::from_utf8(f.into_data().expect("a data frame").to_vec()).expect("text")
            }
        }
    }

    #[test]
    fn a_single_message_body_has_ended_once_its_frame_is_out() {
        let mut b = body(vec![data("message"), Poll::Ready(None)]);
        assert!(!b.is_end_stream());
        assert_eq!(next(&mut b), "message");
        assert!(b.is_end_stream(), "the frame must be known to be the last");
        assert_eq!(next(&mut b), "end");
        assert_eq!(
            b.inner.polled, 2,
            "the inner body is not polled after its end"
        );
    }

    #[test]
    fn frames_keep_their_order_across_a_look_ahead_that_is_not_ready() {
        let mut b = body(vec![
            data("one"),
            // The look-ahead after "one" meets this one; the next poll meets the second.
            Poll::Pending,
            Poll::Pending,
            data("two"),
            data("three"),
            Poll::Ready(None),
        ]);
        assert_eq!(next(&mut b), "one");
        assert!(!b.is_end_stream());
        assert_eq!(next(&mut b), "pending");
        assert_eq!(next(&mut b), "two");
        assert!(!b.is_end_stream(), "three is still to come");
        assert_eq!(b.size_hint().lower(), 5, "the frame read ahead counts");
        assert_eq!(next(&mut b), "three");
        assert!(b.is_end_stream());
        assert_eq!(next(&mut b), "end");
    }

    #[test]
    fn an_error_read_ahead_comes_out_after_the_frame_before_it() {
        let mut b = body(vec![
            data("one"),
            Poll::Ready(Some(Err("broken"))),
            data("x"),
        ]);
        assert_eq!(next(&mut b), "one");
        assert!(!b.is_end_stream());
        assert_eq!(next(&mut b), "error: broken");
        assert_eq!(b.inner.polled, 2, "nothing is read ahead after an error");
    }

    #[test]
    fn an_empty_body_ends_at_once() {
        let mut b = body(vec![]);
        assert_eq!(next(&mut b), "end");
        assert!(b.is_end_stream());
        assert_eq!(next(&mut b), "end");
        assert_eq!(b.inner.polled, 1);
    }
}
