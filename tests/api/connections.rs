//! Slow and idle clients (SPEC: headers within 10 s; idle connections closed) and the cap on
//! connections served at once, over raw TCP.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::helpers::{spawn_app, spawn_app_with};

const REQUEST: &[u8] = b"GET /health/live HTTP/1.1\r\nHost: keel\r\n\r\n";

/// Reads one response (headers and a `Content-Length` body); panics on EOF.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buffer = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&buffer).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .map_or(0, |value| value.trim().parse().unwrap());
            if buffer.len() >= end + 4 + length {
                return text;
            }
        }
        let mut chunk = [0; 4096];
        let read = stream.read(&mut chunk).await.expect("read");
        assert!(read > 0, "connection closed before a whole response: {text:?}");
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// How long after `since` the server closed `stream` (EOF or reset), reading whatever comes.
async fn closed_after(stream: &mut TcpStream, since: Instant) -> Duration {
    let mut chunk = [0; 4096];
    let limit = Duration::from_secs(20);
    loop {
        match tokio::time::timeout(limit.saturating_sub(since.elapsed()), stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn clients_that_do_not_finish_their_headers_and_idle_connections_are_closed_after_10_s() {
    let app = spawn_app().await;
    let address = format!("127.0.0.1:{}", app.port);
    let started = Instant::now();

    // Connects and says nothing.
    let mut silent = TcpStream::connect(&address).await.unwrap();
    // Dribbles a header a byte every 2 s: each byte must not buy more time.
    let mut dribbling = TcpStream::connect(&address).await.unwrap();
    dribbling
        .write_all(b"GET /health/live HTTP/1.1\r\n")
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        for byte in b"X-Slow: aaaaaaaaaa" {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if dribbling.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
        dribbling
    });
    // Asks once, then keeps the connection open without a next request.
    let mut idle = TcpStream::connect(&address).await.unwrap();
    idle.write_all(REQUEST).await.unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();

    // A client that does send its request in time is served, after 5 s of silence too.
    let mut late = TcpStream::connect(&address).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    late.write_all(REQUEST).await.unwrap();
    assert!(read_response(&mut late).await.starts_with("HTTP/1.1 200"));

    let silent_closed = closed_after(&mut silent, started).await;
    let idle_closed = closed_after(&mut idle, idle_since).await;
    let mut dribbling = dribble.await.unwrap();
    let dribbling_closed = closed_after(&mut dribbling, started).await;
    for (who, closed) in [
        ("silent", silent_closed),
        ("dribbling", dribbling_closed),
        ("idle", idle_closed),
    ] {
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(14)).contains(&closed),
            "{who} connection closed after {closed:?}"
        );
    }
}

#[tokio::test]
async fn connections_over_max_connections_wait_until_one_closes() {
    let app = spawn_app_with(|env| {
        env.insert("MAX_CONNECTIONS", "2".to_owned());
    })
    .await;
    let address = format!("127.0.0.1:{}", app.port);
    let mut first = TcpStream::connect(&address).await.unwrap();
    first.write_all(REQUEST).await.unwrap();
    assert!(read_response(&mut first).await.starts_with("HTTP/1.1 200"));
    let mut second = TcpStream::connect(&address).await.unwrap();
    second.write_all(REQUEST).await.unwrap();
    assert!(read_response(&mut second).await.starts_with("HTTP/1.1 200"));

    // The kernel accepts the third connection; keel does not serve it while two are open.
    let mut third = TcpStream::connect(&address).await.unwrap();
    third.write_all(REQUEST).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_secs(1), read_response(&mut third)).await;
    assert!(waiting.is_err(), "served a third connection at once: {waiting:?}");

    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(3), read_response(&mut third))
        .await
        .expect("served once a slot is free");
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
}
