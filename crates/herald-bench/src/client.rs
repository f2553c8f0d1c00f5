//! A lean HTTP/1.1 keep-alive connection for the load generator.
//!
//! One hyper client connection per task, no pool and no shared state, so the generator
//! spends as little of the machine's two cores as possible. Every request has a
//! timeout, and only loopback addresses are accepted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Longest wait for one response before the request counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request body: either a JSON document or nothing.
type RequestBody = http_body_util::Either<Full<Bytes>, Empty<Bytes>>;

/// A response: its status and whole body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    sender: http1::SendRequest<RequestBody>,
    driver: JoinHandle<()>,
    host: HeaderValue,
    /// `Authorization` sent with every request, for a hub that requires a key.
    authorization: Option<HeaderValue>,
}

impl Connection {
    /// Connects to a loopback server.
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        if !addr.ip().is_loopback() {
            bail!("refusing to send traffic to {addr}: only loopback addresses are allowed");
        }
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("connect timed out")?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection {
            sender,
            driver,
            host: HeaderValue::from_str(&addr.to_string())?,
            authorization: None,
        })
    }

    /// Sends `Authorization: Bearer <key>` with every request from now on.
    pub fn with_bearer(mut self, key: Option<&str>) -> Self {
        self.authorization = key.and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok());
        self
    }

    /// POSTs a JSON body.
    pub async fn post_json(&mut self, path: &str, body: Bytes) -> Result<Response> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(RequestBody::Left(Full::new(body)))?;
        self.send(request).await
    }

    /// PUTs a JSON body.
    pub async fn put_json(&mut self, path: &str, body: Bytes) -> Result<Response> {
        let request = Request::builder()
            .method(Method::PUT)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(RequestBody::Left(Full::new(body)))?;
        self.send(request).await
    }

    /// DELETEs `path`.
    pub async fn delete(&mut self, path: &str) -> Result<Response> {
        let request = Request::builder()
            .method(Method::DELETE)
            .uri(path)
            .header(HOST, self.host.clone())
            .body(RequestBody::Right(Empty::new()))?;
        self.send(request).await
    }

    /// GETs `path_and_query`.
    pub async fn get(&mut self, path_and_query: &str) -> Result<Response> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path_and_query)
            .header(HOST, self.host.clone())
            .body(RequestBody::Right(Empty::new()))?;
        self.send(request).await
    }

    async fn send(&mut self, mut request: Request<RequestBody>) -> Result<Response> {
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(hyper::header::AUTHORIZATION, authorization.clone());
        }
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(Response { status, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .context("request timed out")?
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
