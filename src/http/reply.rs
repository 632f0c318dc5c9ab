//! Answers as every route builds them: a whole body with its type, plain text, JSON, a 404, and
//! a body fed from a channel (event streams and files).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Bytes, Frame};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::sync::mpsc;

/// An answer.
pub type Reply = Response<BoxBody<Bytes, Infallible>>;

/// `content` as `content_type`, never cached.
pub fn body(status: StatusCode, content_type: &'static str, content: impl Into<Bytes>) -> Reply {
    let mut reply = Response::new(Full::new(content.into()).boxed());
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Everything here changes while a job runs, the page included when vpd is upgraded.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    reply
}

/// Plain text.
pub fn text(status: StatusCode, content: &'static str) -> Reply {
    body(status, "text/plain; charset=utf-8", content)
}

/// JSON.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(bytes) => body(status, "application/json", bytes),
        Err(e) => body(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", e.to_string()),
    }
}

/// A 404 naming the path.
pub fn not_found(path: &str) -> Reply {
    let message = serde_json::json!({ "error": format!("nothing at {path}") });
    json(StatusCode::NOT_FOUND, &message)
}

/// A response body fed from a channel: ends when the sender goes.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}
