//! A real intake over TLS: `start()` on port 0, HTTP/2 and HTTP/1.1 with the dev CA, TLS 1.2
//! refused, a donation end to end, graceful shutdown.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use datadonor_intake::testkit;
use datadonor_schemas::receipt::{verify_receipt, ReceiptBundle};

fn client(dir: &std::path::Path, addr: std::net::SocketAddr) -> reqwest::ClientBuilder {
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.join("tls/ca.pem")).unwrap()).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve("localhost", addr)
}

#[tokio::test]
async fn serves_tls13_http1_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let config = testkit::init_test_dir(dir.path()).unwrap();
    let intake = datadonor_intake::start(config).await.unwrap();
    let url = intake.base_url();

    let h2 = client(dir.path(), intake.addr()).build().unwrap();
    let r = h2.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "ok");

    let h1 = client(dir.path(), intake.addr())
        .http1_only()
        .build()
        .unwrap();
    let r = h1
        .get(format!("{url}/v1/hpke-config"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert_eq!(r.status(), 200);

    let tls12 = client(dir.path(), intake.addr())
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert!(
        tls12.get(format!("{url}/healthz")).send().await.is_err(),
        "TLS 1.2 refused"
    );

    // A donation over the wire.
    let study = testkit::load_study(dir.path(), "t2d-dk").unwrap();
    let d = testkit::DonationBuilder::new(&study, testkit::current_hpke_key(dir.path()).unwrap())
        .build()
        .unwrap();
    let r = h2
        .post(format!("{url}/v1/donations"))
        .header("content-type", "application/vnd.datadonor.envelope.v1")
        .body(d.envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bundle = ReceiptBundle::from_json(&r.bytes().await.unwrap()).unwrap();
    let key: serde_json::Value = h2
        .get(format!("{url}/v1/ledger-key"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pk =
        datadonor_schemas::signing::PublicKey::from_base64(key["public_key"].as_str().unwrap())
            .unwrap();
    let vk = datadonor_schemas::checkpoint::NoteVerifier::parse_vkey(key["vkey"].as_str().unwrap())
        .unwrap();
    verify_receipt(&bundle, &pk, &vk).unwrap();

    let addr = intake.addr();
    intake.shutdown().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "stopped accepting"
    );
    // The directory is free again.
    let config = datadonor_intake::Config::load_dir(dir.path()).unwrap();
    datadonor_intake::rotate_transport_key(&config, 0).unwrap();
}

/// A donation refused for its headers (a wrong Content-Type) still has its body read before
/// the answer, so that over HTTP/2 the stream ends cleanly: a client that sends the headers, and
/// the body a moment later, gets the `400` and no stream reset (answering at once and dropping
/// the body makes the server reset the stream, which clients such as curl report as an error).
#[tokio::test]
async fn early_refusals_end_http2_streams_cleanly() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let dir = tempfile::tempdir().unwrap();
    let config = testkit::init_test_dir(dir.path()).unwrap();
    let intake = datadonor_intake::start(config).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.path().join("tls/ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(intake.addr()).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    for _ in 0..3 {
        let req = http::Request::post("https://localhost/v1/donations")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        let (answer, mut body) = client.send_request(req, false).unwrap();
        // The body follows the headers a moment later, as over a slow uplink.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let sent = body.send_data(bytes::Bytes::from(vec![b'x'; 8 * 1024]), true);
        let answer = answer.await.unwrap();
        assert_eq!(answer.status(), 400);
        let mut data = answer.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = data.data().await {
            let chunk = chunk.unwrap();
            let _ = data.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        assert!(String::from_utf8_lossy(&text).contains("urn:datadonor:problem:bad-request"));
        // No reset: the body was accepted whole, and the stream holds no reset reason.
        assert!(sent.is_ok(), "the body was refused: {sent:?}");
        let reset = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            std::future::poll_fn(|cx| body.poll_reset(cx)),
        )
        .await;
        assert!(
            !matches!(reset, Ok(Ok(_))),
            "the stream was reset after the answer: {reset:?}"
        );
        client = client.ready().await.unwrap();
    }
    intake.shutdown().await.unwrap();
}
