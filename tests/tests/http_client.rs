//! `surv_tests::http`, the client of the tests and surv-load, against a scripted server on
//! loopback: each body framing, the caps, a malformed status line, a peer that closes early,
//! keep-alive reuse, the timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use surv_tests::http::{self, Conn, Limits, Request};
use surv_tests::IO_TIMEOUT;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

fn limits() -> Limits {
    Limits::new(IO_TIMEOUT, 1 << 20)
}

/// What the scripted server saw: each connection's requests, whole (head and body).
type Seen = Vec<Vec<String>>;

/// A server that answers the requests of each connection it accepts with the next of
/// `answers` (one list per connection, one answer per request, in order), closing the
/// connection after its last answer; it stops after the last connection.
async fn serve(answers: Vec<Vec<Vec<u8>>>) -> (SocketAddr, JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for conn in answers {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut io = BufReader::new(tcp);
            let mut requests = Vec::new();
            for answer in conn {
                requests.push(read_request(&mut io).await);
                io.get_mut().write_all(&answer).await.unwrap();
            }
            seen.push(requests);
        }
        seen
    });
    (addr, task)
}

/// One request: its head and the body its Content-Length gives.
async fn read_request(io: &mut BufReader<tokio::net::TcpStream>) -> String {
    let mut text = String::new();
    loop {
        let n = io.read_line(&mut text).await.unwrap();
        assert!(n > 0, "the client closed inside a request: {text:?}");
        if text.ends_with("\r\n\r\n") {
            break;
        }
    }
    let len = text
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; len];
    io.read_exact(&mut body).await.unwrap();
    text + &String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn a_content_length_body_with_headers_looked_up_in_any_case() {
    let (addr, server) = serve(vec![vec![
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
    ]])
    .await;
    let r = http::get(addr, "/status?x=1", limits()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK");
    assert_eq!(r.body, b"hello");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("CONTENT-LENGTH"), Some("5"));
    assert_eq!(r.header("location"), None);
    assert!(r.closes(), "a one-off request asks for the close");
    let seen = server.await.unwrap();
    assert_eq!(
        seen[0][0],
        format!("GET /status?x=1 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
    );
}

#[tokio::test]
async fn a_post_sends_its_headers_and_body() {
    let (addr, server) = serve(vec![vec![
        b"HTTP/1.1 201 Created\r\nLocation: /cam/main/whep/7\r\nContent-Length: 6\r\n\r\nanswer"
            .to_vec(),
    ]])
    .await;
    let req = Request::post("/cam/main/whep", b"v=0\r\n")
        .headers(&[("Host", "load"), ("Content-Type", "application/sdp")]);
    let r = http::request(addr, &req, limits()).await.unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.header("Location"), Some("/cam/main/whep/7"));
    assert_eq!(r.text(), "answer");
    let seen = server.await.unwrap();
    assert_eq!(
        seen[0][0],
        "POST /cam/main/whep HTTP/1.1\r\nHost: load\r\nContent-Type: application/sdp\r\n\
         Content-Length: 5\r\nConnection: close\r\n\r\nv=0\r\n"
    );
}

#[tokio::test]
async fn a_chunked_body_with_extensions_and_trailers() {
    let (addr, _server) = serve(vec![vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=x\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\n"
            .to_vec(),
    ]])
    .await;
    let r = http::get(addr, "/", limits()).await.unwrap();
    assert_eq!(r.body, b"hello, world");
    assert_eq!(r.header("x-trailer"), Some("yes"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
}

#[tokio::test]
async fn a_body_read_to_the_close() {
    let (addr, _server) = serve(vec![vec![
        b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\n\r\n\xFF\xD8 to the end".to_vec(),
    ]])
    .await;
    let mut conn = Conn::new(addr, limits());
    let r = conn.get("/snapshot.jpg").await.unwrap();
    assert_eq!(r.body, b"\xFF\xD8 to the end");
    assert!(r.closes());
    assert!(
        !conn.is_open(),
        "a body read to the close leaves nothing to reuse"
    );
}

#[tokio::test]
async fn a_204_has_no_body_even_on_a_kept_alive_connection() {
    let (addr, _server) = serve(vec![vec![
        b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    ]])
    .await;
    let mut conn = Conn::new(addr, limits());
    let r = conn.get("/a").await.unwrap();
    assert_eq!((r.status, r.body.len(), r.closes()), (204, 0, false));
    assert_eq!(conn.get("/b").await.unwrap().body, b"ok");
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused_whatever_its_framing() {
    let cap = Limits::new(IO_TIMEOUT, 10);
    let big = vec![b'x'; 11];
    let answers = [
        [b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n".as_slice(), &big].concat(),
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nxxxxxx\r\n5\r\nxxxxx\r\n0\r\n\r\n".as_slice()].concat(),
        [b"HTTP/1.0 200 OK\r\n\r\n".as_slice(), &big].concat(),
    ];
    for answer in answers {
        let (addr, _server) = serve(vec![vec![answer.clone()]]).await;
        let e = http::get(addr, "/", cap).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("over the cap of 10"),
            "{e:#} for {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Exactly at the cap is fine.
    let (addr, _server) = serve(vec![vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nxxxxxxxxxx".to_vec(),
    ]])
    .await;
    assert_eq!(http::get(addr, "/", cap).await.unwrap().body.len(), 10);
}

#[tokio::test]
async fn a_head_over_the_cap_is_refused() {
    let junk = format!("X-Junk: {}\r\n", "j".repeat(200));
    let answer = format!("HTTP/1.1 200 OK\r\n{}\r\n", junk.repeat(10));
    let (addr, _server) = serve(vec![vec![answer.into_bytes()]]).await;
    let limits = Limits {
        max_head_bytes: 1024,
        ..limits()
    };
    let e = http::get(addr, "/", limits).await.unwrap_err();
    assert!(
        format!("{e:#}").contains("response head over the cap of 1024"),
        "{e:#}"
    );
}

#[tokio::test]
async fn a_malformed_status_line_is_an_error_that_quotes_it() {
    for line in [
        "ICY 200 OK",
        "HTTP/1.1 20 OK",
        "HTTP/1.1 2000 OK",
        "HTTP/2 200 OK",
        "HTTP/1.1200 OK",
        "",
    ] {
        let answer = format!("{line}\r\nContent-Length: 0\r\n\r\n");
        let (addr, _server) = serve(vec![vec![answer.into_bytes()]]).await;
        let e = http::get(addr, "/", limits()).await.unwrap_err();
        assert!(
            format!("{e:#}").contains(&format!("a malformed status line: {line:?}")),
            "{e:#}"
        );
    }
    // A status line without a reason phrase is well formed.
    let (addr, _server) = serve(vec![vec![
        b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n".to_vec()
    ]])
    .await;
    assert_eq!(http::get(addr, "/", limits()).await.unwrap().status, 404);
}

#[tokio::test]
async fn a_peer_that_closes_early_is_an_error_naming_where() {
    let cases: [(&[u8], &str); 5] = [
        (b"", "closed before a response"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Le",
            "ended inside the response head",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            "ended inside a body of 10 bytes",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nabc",
            "ended inside a chunk",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
            "ended before the last chunk",
        ),
    ];
    for (answer, want) in cases {
        let (addr, _server) = serve(vec![vec![answer.to_vec()]]).await;
        let e = http::get(addr, "/", limits()).await.unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.starts_with("GET /: ") && e.contains(want),
            "{e}, not {want:?}"
        );
    }
}

#[tokio::test]
async fn keep_alive_reuses_one_connection_and_reconnects_after_a_close() {
    let (addr, server) = serve(vec![
        vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nthree".to_vec(),
        ],
        vec![
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nfour".to_vec(),
        ],
    ])
    .await;
    let mut conn = Conn::open(addr, limits()).await.unwrap();
    let mut bodies = Vec::new();
    for path in ["/1", "/2", "/3", "/4"] {
        let r = conn.get(path).await.unwrap();
        bodies.push(r.text().into_owned());
    }
    assert_eq!(bodies, ["one", "two", "three", "four"]);
    assert!(conn.is_open(), "HTTP/1.0 with keep-alive stays open");
    let seen = server.await.unwrap();
    let paths: Vec<Vec<&str>> = seen
        .iter()
        .map(|c| c.iter().map(|r| r.split(' ').nth(1).unwrap()).collect())
        .collect();
    assert_eq!(
        paths,
        [vec!["/1", "/2", "/3"], vec!["/4"]],
        "three requests on the first connection, the fourth on a new one after the close"
    );
    assert!(
        !seen[0][0].contains("Connection:"),
        "a kept-alive request asks for nothing: {:?}",
        seen[0][0]
    );
}

#[tokio::test]
async fn a_silent_server_fails_the_request_at_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::time::sleep(IO_TIMEOUT).await;
        drop(tcp);
    });
    let started = Instant::now();
    let e = http::get(addr, "/slow", Limits::new(Duration::from_millis(200), 1024))
        .await
        .unwrap_err();
    assert_eq!(format!("{e:#}"), "GET /slow took over 200ms");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn blocking_runs_a_request_on_a_plain_thread() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut tcp, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = tcp.read(&mut buf).unwrap();
        tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
    });
    let r = http::blocking(http::get(addr, "/status", limits())).unwrap();
    assert_eq!(r.body, b"{}");
    server.join().unwrap();
}
