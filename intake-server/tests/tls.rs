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

/// A request refused before its body was needed (wrong Content-Type, bad token) still has its
/// body read, within the size limit and the body timeout, before the answer: over HTTP/2 the
/// stream then ends cleanly instead of being reset after the answer, which clients such as
/// curl report as an error.
#[tokio::test]
async fn early_refusals_end_http2_streams_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = testkit::init_test_dir(dir.path()).unwrap();
    let intake = datadonor_intake::start(config).await.unwrap();
    let url = intake.base_url();
    let h2 = client(dir.path(), intake.addr()).build().unwrap();
    let body = vec![b'x'; 256 * 1024];
    for (path, ct, auth) in [
        ("/v1/donations", "text/plain", None),
        ("/v1/ledger/events", "application/json", Some("Bearer 00")),
    ] {
        for _ in 0..3 {
            let mut req = h2
                .post(format!("{url}{path}"))
                .header("content-type", ct)
                .body(body.clone());
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap_or_else(|e| panic!("{path}: {e:?}"));
            assert_eq!(r.version(), http::Version::HTTP_2);
            assert!(r.status().is_client_error(), "{path}: {}", r.status());
            let text = r.text().await.unwrap_or_else(|e| panic!("{path}: {e:?}"));
            assert!(text.contains("urn:datadonor:problem:"), "{text}");
        }
    }
    intake.shutdown().await.unwrap();
}
