//! HTTPS and WSS through the binary: certificates made here with rcgen (a throwaway CA,
//! a server certificate for 127.0.0.1, client certificates), the server started with
//! `--tls-cert/--tls-key[/--tls-client-ca]`, and reqwest (rustls) trusting only that CA.
//! Covers health, publish, query and a live stream over WSS; client certificates
//! required; a silent client closed during the handshake; a certificate replaced on disk
//! and reloaded on SIGHUP (and a broken one not taken); bad flags stopping the server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// A throwaway CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self) -> Leaf {
        self.leaf(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self) -> Leaf {
        self.leaf(&["herald-test-client"], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Where the server reads its TLS files from.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file the way an operator should (write aside, then rename).
    fn put(&self, name: &str, text: &str) {
        let aside = self.path(&format!(".{name}.new"));
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, self.path(name)).unwrap();
    }

    fn put_server(&self, leaf: &Leaf) {
        self.put("cert.pem", &leaf.cert);
        self.put("key.pem", &leaf.key);
    }

    fn args(&self, client_ca: bool) -> Vec<String> {
        let mut args = vec![
            "--tls-cert".to_owned(),
            path_arg(&self.path("cert.pem")),
            "--tls-key".to_owned(),
            path_arg(&self.path("key.pem")),
        ];
        if client_ca {
            args.push("--tls-client-ca".to_owned());
            args.push(path_arg(&self.path("client-ca.pem")));
        }
        args
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

async fn start_tls(files: &Files, client_ca: bool, extra: &[&str]) -> TestHerald {
    let mut args = files.args(client_ca);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let h = TestHerald::start_with(&args).await;
    assert!(h.base_url().starts_with("https://"), "{}", h.base_url());
    h
}

/// An HTTPS client that trusts only `ca`, presenting `identity` if given, and opening a
/// new connection for every request (so each sees the server's current certificate).
fn https_client(ca: &Ca, identity: Option<&Leaf>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10));
    if let Some(leaf) = identity {
        let pem = format!("{}{}", leaf.cert, leaf.key);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn health(client: &reqwest::Client, h: &TestHerald) -> Result<u16, String> {
    match client.get(h.url("/health")).send().await {
        Ok(resp) => Ok(resp.status().as_u16()),
        Err(error) => Err(chain(&error)),
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A WebSocket over TLS (tokio-tungstenite is built without TLS: the TLS stream is
/// made here and handed to its plain client).
async fn wss_connect(
    h: &TestHerald,
    ca: &Ca,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = ca.pem();
    let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).unwrap();
    roots.add(ca_der).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let url = h.ws_url(path);
    assert!(url.starts_with("wss://"), "{url}");
    let (ws, response) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("WebSocket upgrade over TLS");
    assert_eq!(response.status(), 101);
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_and_wss_streams() {
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.put_server(&ca.server());
    let mut h = start_tls(&files, false, &[]).await;
    h.http = https_client(&ca, None);

    assert_eq!(health(&h.http, &h).await, Ok(200));
    let published = h.publish("hub.tls.created", json!({"n": 1})).await;
    assert_publish_response(&published);
    let events = h.query(&[("subject", "hub.tls.>".to_owned())]).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], published["event_id"]);

    // A stream over WSS: the stored event replayed, then a live one.
    let mut ws = wss_connect(&h, &ca, &stream_path("hub.tls.>", "&from_seq=0")).await;
    let live = async {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    return serde_json::from_str::<Value>(&text).unwrap()
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("no event frame over WSS: {other:?}"),
            }
        }
    };
    let first = live.await;
    assert_eq!(first["data"]["id"], published["event_id"]);
    let second = h.publish("hub.tls.updated", json!({"n": 2})).await;
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                break serde_json::from_str::<Value>(&text).unwrap()
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no live event over WSS: {other:?}"),
        }
    };
    assert_eq!(frame["data"]["id"], second["event_id"]);
    assert_eq!(frame["subject"], "hub.tls.updated");

    // Plain HTTP to the TLS port gets nowhere.
    let plain = http_client()
        .get(format!("http://{}/health", h.addr()))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() == 400);
    // A client that does not trust the CA is refused.
    let stranger = https_client(&Ca::new("Another CA"), None);
    let refused = health(&stranger, &h).await;
    assert!(refused.is_err(), "{refused:?}");
    let _ = ws.close(None).await;
    assert!(h.terminate().await.success());
}

/// Over TLS too, a body refused from its `Content-Length` gets its 413, not a reset:
/// the server sends `close_notify` and its FIN, then reads what the client still sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_its_413_over_tls() {
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.put_server(&ca.server());
    let mut h = start_tls(&files, false, &[]).await;
    h.http = https_client(&ca, None);
    let body = vec![b'a'; 8 * 1024 * 1024];
    for round in 0..5 {
        let resp = h
            .http
            .post(h.url("/api/events"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: no answer: {}", chain(&e)));
        check_error(resp, &[413], &["payload_too_large"])
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    // The WSS stream is an upgrade: it is not held up by lingering either.
    let mut ws = wss_connect(&h, &ca, &stream_path("hub.tls.>", "")).await;
    let _ = ws.close(None).await;
    assert_eq!(h.event_count().await, 0);
    assert!(h.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_the_handshake_is_closed() {
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.put_server(&ca.server());
    let h = start_tls(&files, false, &["--header-read-timeout-secs", "1"]).await;
    // Connects and sends nothing: closed after the header-read timeout.
    let mut silent = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buffer))
        .await
        .expect("the server closed the silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(health(&https_client(&ca, None), &h).await, Ok(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_with_a_client_ca() {
    let server_ca = Ca::new("Herald server CA");
    let client_ca = Ca::new("Herald client CA");
    let files = Files::new();
    files.put_server(&server_ca.server());
    files.put("client-ca.pem", &client_ca.pem());
    let h = start_tls(&files, true, &[]).await;

    let anonymous = health(&https_client(&server_ca, None), &h).await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    let foreign = Ca::new("Not the client CA").client();
    let forged = health(&https_client(&server_ca, Some(&foreign)), &h).await;
    assert!(forged.is_err(), "a certificate of another CA: {forged:?}");

    let client = https_client(&server_ca, Some(&client_ca.client()));
    assert_eq!(health(&client, &h).await, Ok(200));
    let resp = client
        .post(h.url("/api/events"))
        .json(&json!({"subject": "hub.mtls.x", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_a_broken_one_is_not_taken() {
    let old_ca = Ca::new("Herald old CA");
    let new_ca = Ca::new("Herald new CA");
    let files = Files::new();
    files.put_server(&old_ca.server());
    let h = start_tls(&files, false, &[]).await;
    let old_client = https_client(&old_ca, None);
    let new_client = https_client(&new_ca, None);
    assert_eq!(health(&old_client, &h).await, Ok(200));
    assert!(health(&new_client, &h).await.is_err());

    // A new CA and certificate on disk, then SIGHUP: new connections see them.
    files.put_server(&new_ca.server());
    send_signal(h.pid(), "HUP");
    let reloaded = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { health(&new_client, &h).await == Ok(200) },
    )
    .await;
    assert!(
        reloaded,
        "the new certificate is served; stderr:\n{}",
        h.stderr()
    );
    assert!(
        health(&old_client, &h).await.is_err(),
        "the old certificate is gone"
    );

    // A broken certificate: the reload fails, is logged, and the new one stays.
    files.put("cert.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n");
    send_signal(h.pid(), "HUP");
    let logged = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { h.stderr().contains("TLS reload failed") },
    )
    .await;
    assert!(logged, "stderr:\n{}", h.stderr());
    assert_eq!(health(&new_client, &h).await, Ok(200));

    // A key that is not the certificate's: refused the same way.
    files.put("cert.pem", &new_ca.server().cert);
    send_signal(h.pid(), "HUP");
    let logged = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { h.stderr().matches("TLS reload failed").count() >= 2 },
    )
    .await;
    assert!(logged, "stderr:\n{}", h.stderr());
    assert_eq!(health(&new_client, &h).await, Ok(200));
}

/// `herald serve` with `args`, expected to exit before listening; its stderr.
async fn failed_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(HERALD);
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data")
        .arg(dir.path().join("herald.db"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    scrub_env(&mut cmd);
    let output = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("herald exits")
        .unwrap();
    assert!(!output.status.success(), "{args:?} started");
    assert!(output.stdout.is_empty(), "{args:?}: never listened");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_stop_the_server_at_start() {
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.put_server(&ca.server());
    files.put("garbage.pem", "hello\n");
    let cert = path_arg(&files.path("cert.pem"));
    let key = path_arg(&files.path("key.pem"));
    let missing = path_arg(&files.path("missing.pem"));
    let garbage = path_arg(&files.path("garbage.pem"));
    let other_key = KeyPair::generate().unwrap().serialize_pem();
    files.put("other-key.pem", &other_key);
    let other = path_arg(&files.path("other-key.pem"));

    let stderr = failed_start(&["--tls-cert", &cert]).await;
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let stderr = failed_start(&["--tls-key", &key]).await;
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    let stderr = failed_start(&["--tls-client-ca", &cert]).await;
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    let stderr = failed_start(&["--tls-cert", &missing, "--tls-key", &key]).await;
    assert!(
        stderr.contains("cannot read the TLS certificate") && stderr.contains("missing.pem"),
        "{stderr}"
    );
    let stderr = failed_start(&["--tls-cert", &garbage, "--tls-key", &key]).await;
    assert!(
        stderr.contains("TLS certificate") && stderr.contains("no CERTIFICATE block"),
        "{stderr}"
    );
    let stderr = failed_start(&["--tls-cert", &cert, "--tls-key", &garbage]).await;
    assert!(stderr.contains("no PRIVATE KEY block"), "{stderr}");
    let stderr = failed_start(&["--tls-cert", &cert, "--tls-key", &other]).await;
    assert!(stderr.contains("do not work together"), "{stderr}");
    let stderr = failed_start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &garbage,
    ])
    .await;
    assert!(stderr.contains("TLS client CA"), "{stderr}");
}
