//! A fault-injecting proxy in front of the S3 test server. It forwards every request unchanged
//! (its `Host` header too, so the client's SigV4 signature still holds) and, when told, answers
//! the next batch `PUT`s itself with `503 SlowDown` (an S3 that refuses writes for a while), or
//! forwards them and closes the connection before the answer (the object stored, its
//! acknowledgement lost).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use hyper_util::rt::TokioIo;

/// What the proxy does to the next batch `PUT`s, and what it saw.
#[derive(Debug, Default)]
pub struct Plan {
    /// Answer this many more batch `PUT`s with `503 SlowDown` without forwarding them.
    pub refuse_puts: usize,
    /// Forward this many more batch `PUT`s and drop the connection instead of answering.
    pub lose_puts: usize,
    /// Batch `PUT`s received.
    pub puts_seen: usize,
    /// Batch `PUT`s forwarded to the server.
    pub puts_forwarded: usize,
}

/// The running proxy.
pub struct FaultyS3 {
    /// Its endpoint (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The plan, changed by the test while it runs.
    pub plan: Arc<Mutex<Plan>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
<Message>Please reduce your request rate.</Message></Error>";

impl FaultyS3 {
    /// Listen on a free loopback port and forward to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let plan = Arc::new(Mutex::new(Plan::default()));
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let (p, upstream) = (plan.clone(), upstream.trim_end_matches('/').to_string());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (plan, client, upstream) = (p.clone(), client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        forward(req, plan.clone(), client.clone(), upstream.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { url, plan, task }
    }
}

/// One request: refused, forwarded with its answer lost, or forwarded.
async fn forward(
    req: http::Request<hyper::body::Incoming>,
    plan: Arc<Mutex<Plan>>,
    client: reqwest::Client,
    upstream: String,
) -> Result<http::Response<Body>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(Body::new(body), usize::MAX)
        .await
        .map_err(std::io::Error::other)?;
    let is_batch_put = parts.method == http::Method::PUT && parts.uri.path().ends_with(".ddb");
    let (refuse, lose) = {
        let mut p = plan.lock().unwrap();
        if !is_batch_put {
            (false, false)
        } else {
            p.puts_seen += 1;
            if p.refuse_puts > 0 {
                p.refuse_puts -= 1;
                (true, false)
            } else if p.lose_puts > 0 {
                p.lose_puts -= 1;
                p.puts_forwarded += 1;
                (false, true)
            } else {
                p.puts_forwarded += 1;
                (false, false)
            }
        }
    };
    if refuse {
        return Ok(http::Response::builder()
            .status(503)
            .header("content-type", "application/xml")
            .body(Body::from(SLOW_DOWN))
            .unwrap());
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut rb = client.request(parts.method.clone(), format!("{upstream}{path}"));
    for (k, v) in &parts.headers {
        rb = rb.header(k, v);
    }
    let resp = rb.body(body).send().await.map_err(std::io::Error::other)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.map_err(std::io::Error::other)?;
    if lose {
        // The server stored the object; its answer never reaches the client.
        return Err(std::io::Error::other("answer dropped"));
    }
    let mut out = http::Response::builder().status(status);
    for (k, v) in &headers {
        if k != http::header::CONTENT_LENGTH && k != http::header::TRANSFER_ENCODING {
            out = out.header(k, v);
        }
    }
    Ok(out.body(Body::from(bytes)).unwrap())
}
