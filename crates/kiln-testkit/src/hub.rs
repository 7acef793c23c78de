//! A stand-in for the HF Hub on the loopback interface: serves one model directory the way the
//! Hub's endpoints do (`/api/models/{repo}/revision/{rev}` lists the files; `/{repo}/resolve/
//! {rev}/{file}` answers with the `etag`, `x-repo-commit` and `content-range` headers `hf-hub`
//! reads), and counts the requests, so tests can tell a cached run from a downloading one. No
//! test touches the network.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The commit every served revision resolves to.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A running stand-in; it serves until the test process ends.
pub struct FakeHub {
    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub endpoint: String,
    requests: Arc<AtomicUsize>,
}

impl FakeHub {
    /// Serves the files of `dir` as model repository `repo` (any revision).
    pub fn serve(repo: &str, dir: &Path) -> Self {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .expect("model directory")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_file())
            .map(|p| {
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                (name, std::fs::read(&p).expect("read"))
            })
            .collect();
        files.sort();
        let listener = TcpListener::bind("127.0.0.1:0").expect("loopback port");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let repo = repo.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                // One bad exchange must not stop the server.
                let _ = answer(stream, &repo, &files);
            }
        });
        Self { endpoint, requests }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn answer(stream: TcpStream, repo: &str, files: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let listing = format!("/api/models/{repo}/revision/");
    let resolve = format!("/{repo}/resolve/");
    let mut stream = stream;
    if path.starts_with(&listing) {
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|(name, _)| serde_json::json!({ "rfilename": name }))
            .collect();
        let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
        return respond(
            &mut stream,
            "200 OK",
            &[("content-type", "application/json".into())],
            body.as_bytes(),
            method,
        );
    }
    if let Some(rest) = path.strip_prefix(&resolve)
        && let Some((_, file)) = rest.split_once('/')
        && let Some((_, bytes)) = files.iter().find(|(name, _)| name == file)
    {
        let headers = [
            ("etag", format!("\"{}\"", content_tag(bytes))),
            ("x-repo-commit", COMMIT.to_string()),
            (
                "content-range",
                format!("bytes 0-{}/{}", bytes.len().saturating_sub(1), bytes.len()),
            ),
        ];
        return respond(&mut stream, "200 OK", &headers, bytes, method);
    }
    respond(
        &mut stream,
        "404 Not Found",
        &[("x-error-code", "EntryNotFound".into())],
        b"not found",
        method,
    )
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    method: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if method != "HEAD" {
        // The client drops a metadata request's body unread; a reset then is expected.
        let _ = stream.write_all(body);
    }
    stream.flush()
}

/// FNV-1a of the content, as hex: distinct files get distinct blob names.
fn content_tag(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}{:08x}", bytes.len())
}
