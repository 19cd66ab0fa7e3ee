//! The control plane on hyper, with nodes started in-process by `tidecast::run` (the library's
//! entry, as `tidecast serve` calls it) on loopback port 0: HTTP/1.1 request bodies the
//! hand-written reader never took (chunked, `Expect: 100-continue`), their limits, and a node
//! that stops when its shutdown future resolves. Raw sockets play the client, so every byte on
//! the wire is the test's.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use tidecast::config::{ServeArgs, ServeConfig};

const ADMIN: &str = "Basic YWRtaW46aW5wcm9jZXNzLXB3"; // admin:inprocess-pw

/// A node running in this process; stopped (and its directory removed) on drop.
struct InProcess {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tidecast::StartError>>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start() -> InProcess {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = ServeConfig::load(ServeArgs {
            data_dir: Some(dir.path().to_owned()),
            admin_password: Some("inprocess-pw".to_owned()),
            ..ServeArgs::default()
        })
        .expect("a valid configuration");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tidecast::run(listener, config, async {
            let _ = stopped.await;
        }));
        InProcess {
            addr,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Sends `request` and then `body` in `pieces`, reads the whole answer (the node closes).
    async fn exchange(&self, request: &str, pieces: &[&[u8]]) -> (u16, String, String) {
        let mut s = TcpStream::connect(self.addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("send head");
        for p in pieces {
            // A client that stops sending once refused is fine: the answer is what counts.
            if s.write_all(p).await.is_err() {
                break;
            }
        }
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer))
            .await
            .expect("an answer within 20 s")
            .expect("read the answer");
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, head.to_owned(), body.to_owned())
    }

    async fn mounts(&self) -> String {
        let req =
            format!("GET /api/v1/mounts HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN}\r\n\r\n");
        let (status, _, body) = self.exchange(&req, &[]).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `chunk` in HTTP/1.1 chunked framing.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_expect_continue_bodies_reach_the_api_within_its_limits() {
    let node = InProcess::start().await;

    // A chunked JSON body in three pieces, as an HTTP/1.1 client streaming a request sends it.
    let head = format!(
        "POST /api/v1/mounts HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let json = br#"{"path": "/chunked.mp3", "password": "a-long-source-password"}"#;
    let (a, b) = json.split_at(20);
    let (status, head_text, body) = node
        .exchange(&head, &[&chunk(a), &chunk(b), b"0\r\n\r\n"])
        .await;
    assert_eq!(status, 201, "{head_text}\n{body}");
    // Header names as old players and tools look for them, and one request per connection.
    assert!(
        head_text.contains("\r\nContent-Type: application/json"),
        "{head_text}"
    );
    assert!(head_text.contains("\r\nConnection: close"), "{head_text}");
    assert!(node.mounts().await.contains("/chunked.mp3"));

    // `Expect: 100-continue` (curl sends it for large uploads): the 100 comes first, then the
    // answer to the body.
    let json = br#"{"path": "/expect.mp3", "password": "another-source-password"}"#;
    let head = format!(
        "POST /api/v1/mounts HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        json.len()
    );
    let mut s = TcpStream::connect(node.addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("send head");
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut first))
        .await
        .expect("a 100 Continue before the body is sent")
        .expect("read");
    assert!(
        first[..n].starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    s.write_all(json).await.expect("send body");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("read the answer");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains(" 201 Created"), "{rest}");
    assert!(node.mounts().await.contains("/expect.mp3"));

    // A chunked body past the API's 64 KiB is refused once the limit is crossed, and changes
    // nothing.
    let head = format!(
        "POST /api/v1/mounts HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let filler = format!(
        r#"{{"path": "/huge.mp3", "charset": "{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let pieces: Vec<Vec<u8>> = filler.as_bytes().chunks(8192).map(chunk).collect();
    let mut refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    refs.push(b"0\r\n\r\n");
    let (status, _, body) = node.exchange(&head, &refs).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("65536"), "{body}");
    assert!(!node.mounts().await.contains("/huge.mp3"));

    // Without credentials, nothing of a chunked body is read: 401 at once.
    let head = "POST /api/v1/mounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (status, head_text, _) = node.exchange(head, &[]).await;
    assert_eq!(status, 401, "{head_text}");
    assert!(
        head_text
            .to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{head_text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_when_its_shutdown_future_resolves() {
    let mut node = InProcess::start().await;
    assert!(node.mounts().await.starts_with('['));
    let task = node.task.take().expect("running");
    node.stop.take().expect("not stopped yet").send(()).ok();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run returns within 10 s of its shutdown")
        .expect("the node's task did not panic");
    assert!(result.is_ok(), "{result:?}");
    // The listener went with it: nothing accepts on the port any more.
    assert!(TcpStream::connect(node.addr).await.is_err());
}
