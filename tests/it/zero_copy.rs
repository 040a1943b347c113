//! Blob downloads sent with `sendfile` (src/serve/zero_copy.rs), over a real
//! socket: the bytes must be the blob's, for whole and ranged reads, on
//! reused connections, for ranges that are not in the page cache, and never
//! through the zero-copy path where it must not be taken (HTTP/2, content
//! not verified yet, a download alone). A companion download held open
//! keeps the others beside one, where `sendfile` is used.
//!
//! One test function, run in a process of its own: the check that the path
//! was taken reads process-wide counters, and the other tests in this binary
//! pull blobs at the same time.

use std::os::fd::AsRawFd;
use std::process::Command;

use crate::support::backend::filesystem_only;
use crate::support::{expect_status, expect_status_of, random_bytes, sha256_digest, TestRegistry};
use berth::http::downloads_in_flight;
use berth::serve::zero_copy;
use reqwest::StatusCode;

async fn get_bytes(registry: &TestRegistry, path: &str, range: Option<&str>) -> Vec<u8> {
    let mut request = registry.client.get(registry.url(path));
    if let Some(range) = range {
        request = request.header("Range", range);
    }
    let resp = request.send().await.unwrap();
    let want = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let resp = expect_status_of(resp, want, &format!("GET {path}")).await;
    resp.bytes().await.unwrap().to_vec()
}

/// Waits until the zero-copy counter has grown by `sent` since `before`: a
/// server thread counts after `sendfile` returns, which can be just after
/// the client has read the bytes. Fails if it grows by anything else.
async fn expect_sent(before: u64, sent: u64) {
    for _ in 0..200 {
        let now = zero_copy::bytes_sent() - before;
        assert!(now <= sent, "sent {now} bytes by sendfile, expected {sent}");
        if now == sent {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!(
        "sent {} bytes by sendfile, expected {sent}",
        zero_copy::bytes_sent() - before
    );
}

/// The counter once no count is still on its way (unchanged for 100 ms).
async fn settled() -> u64 {
    let mut last = zero_copy::bytes_sent();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = zero_copy::bytes_sent();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Sends GETs of `path` (with the given Range headers) in one write on one
/// connection, HTTP/1.1 pipelining, and returns the bodies in order.
async fn pipelined(registry: &TestRegistry, path: &str, ranges: &[Option<&str>]) -> Vec<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(registry.addr).await.unwrap();
    let mut requests = String::new();
    for range in ranges {
        requests.push_str(&format!("GET {path} HTTP/1.1\r\nHost: registry\r\n"));
        if let Some(range) = range {
            requests.push_str(&format!("Range: {range}\r\n"));
        }
        requests.push_str("\r\n");
    }
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let mut bodies = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    while bodies.len() < ranges.len() {
        let end_of_head = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed after {} responses", bodies.len());
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buffer[..end_of_head].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .expect("content-length");
        buffer.drain(..end_of_head + 4);
        while buffer.len() < length {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed inside a body");
            buffer.extend_from_slice(&chunk[..n]);
        }
        bodies.push(buffer.drain(..length).collect());
    }
    bodies
}

/// Drops a file's pages from the page cache (they are clean: the blob was
/// synced when committed), so reading it must go to the disk.
fn evict(path: &std::path::Path) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a valid descriptor; the call only advises the kernel.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

/// Starts a download of a blob larger than the socket buffers and reads
/// only its head: the server's response stays in progress (and, alone when
/// it started, is copied: it sends nothing by `sendfile`).
async fn companion(registry: &TestRegistry) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let content = random_bytes(48 * 1024 * 1024, 0x5bd1_e995);
    let digest = registry.push_blob("zc/companion", &content).await;
    assert_eq!(downloads_in_flight(), 0);
    let mut stream = tokio::net::TcpStream::connect(registry.addr).await.unwrap();
    let request = format!("GET /v2/zc/companion/blobs/{digest} HTTP/1.1\r\nHost: registry\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 64 * 1024];
    assert!(stream.read(&mut head).await.unwrap() > 0);
    assert_eq!(downloads_in_flight(), 1);
    stream
}

#[test]
fn blob_downloads_are_sent_from_the_file_and_are_exact() {
    if filesystem_only(
        "sendfile from the blob files of the data directory, whose pages the test evicts by path",
    ) {
        return;
    }
    crate::support::in_own_process(
        "zero_copy::blob_downloads_are_sent_from_the_file_and_are_exact",
        || {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(downloads_are_sent_from_the_file_and_are_exact())
        },
    );
}

async fn downloads_are_sent_from_the_file_and_are_exact() {
    let registry = TestRegistry::start().await;
    let size = 5 * 1024 * 1024 + 123;
    let content = random_bytes(size, 0x9e37_79b9_7f4a_7c15);
    let digest = registry.push_blob("zc/app", &content).await;
    let path = format!("/v2/zc/app/blobs/{digest}");
    let blob_file = registry
        .storage_root()
        .join("blobs/sha256")
        .join(&digest["sha256:".len()..][..2])
        .join(&digest["sha256:".len()..])
        .join("data");
    // Every page in the page cache before a step that counts `sendfile`
    // bytes: in the full suite the kernel now and then dropped a clean
    // megabyte of the just-written blob, and such a range is rightly copied.
    let warm = || drop(std::fs::read(&blob_file).unwrap());

    // A download alone is copied, and exact.
    let before = zero_copy::bytes_sent();
    let body = get_bytes(&registry, &path, None).await;
    assert_eq!(sha256_digest(&body), digest, "alone");
    assert_eq!(settled().await, before, "a download alone is copied");

    let companion = companion(&registry).await;

    // Committed by this process, so verified: the whole blob goes by sendfile.
    warm();
    let before = zero_copy::bytes_sent();
    let body = get_bytes(&registry, &path, None).await;
    assert_eq!(sha256_digest(&body), digest, "whole blob");
    expect_sent(before, size as u64).await;

    // A range, across frame boundaries, and again on the same connection.
    for _ in 0..2 {
        warm();
        let before = zero_copy::bytes_sent();
        let part = get_bytes(&registry, &path, Some("bytes=1000-3000999")).await;
        assert_eq!(part, &content[1000..3_001_000], "range");
        expect_sent(before, 3_000_000).await;
    }

    // Pipelined on one connection: the responses' file ranges queue up in
    // order behind each other.
    warm();
    let before = settled().await;
    let responses = pipelined(
        &registry,
        &path,
        &[
            None,
            Some("bytes=5-104"),
            None,
            Some("bytes=2097100-2097199"),
        ],
    )
    .await;
    assert_eq!(responses[0], content, "pipelined 1");
    assert_eq!(responses[1], &content[5..105], "pipelined 2");
    assert_eq!(responses[2], content, "pipelined 3");
    assert_eq!(responses[3], &content[2_097_100..2_097_200], "pipelined 4");
    expect_sent(before, 2 * size as u64 + 200).await;

    // Clients that hang up mid-download leave the server serving.
    for _ in 0..3 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(registry.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: registry\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut some = vec![0u8; 64 * 1024];
        let n = stream.read(&mut some).await.unwrap();
        assert!(n > 0);
    }
    let body = get_bytes(&registry, &path, None).await;
    assert_eq!(sha256_digest(&body), digest, "after hang-ups");

    // The last byte alone (once the hung-up connections' counts are in).
    warm();
    let before = settled().await;
    let last = get_bytes(&registry, &path, Some(&format!("bytes={}-", size - 1))).await;
    assert_eq!(last, &content[size - 1..]);
    expect_sent(before, 1).await;

    // HEAD sends nothing.
    let before = zero_copy::bytes_sent();
    let head = registry
        .client
        .head(registry.url(&path))
        .send()
        .await
        .unwrap();
    expect_status(head, StatusCode::OK).await;
    assert_eq!(settled().await, before, "HEAD");

    // Not in the page cache: read into memory instead, still exact.
    evict(&blob_file);
    let before = zero_copy::bytes_sent();
    let body = get_bytes(&registry, &path, None).await;
    assert_eq!(sha256_digest(&body), digest, "cold blob");
    assert!(
        zero_copy::bytes_sent() - before < size as u64,
        "an evicted blob must not be sent from the page cache alone"
    );

    // HTTP/2 (h2c) copies frames: it must get bytes, not placeholders.
    let before = settled().await;
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--http2-prior-knowledge"])
        .arg(registry.url(&path))
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl: {out:?}");
    assert_eq!(sha256_digest(&out.stdout), digest, "h2c");
    assert_eq!(settled().await, before, "h2c must not use sendfile");

    // Another process (here: a fresh server on the same data) has not
    // verified the blob: its first read is hashed as it streams, by copy;
    // after that, reads are zero-copy.
    let data = registry.data.path().to_path_buf();
    let second = TestRegistry::start_with(|config| config.data_dir = data).await;
    let before = zero_copy::bytes_sent();
    let body = get_bytes(&second, &path, None).await;
    assert_eq!(sha256_digest(&body), digest, "first read elsewhere");
    assert_eq!(settled().await, before, "unverified content is copied");
    warm();
    let body = get_bytes(&second, &path, None).await;
    assert_eq!(sha256_digest(&body), digest);
    expect_sent(before, size as u64).await;

    // Once the companion is gone, a download is alone again: copied.
    drop(companion);
    for _ in 0..500 {
        if downloads_in_flight() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(downloads_in_flight(), 0, "the companion ended");
    let before = settled().await;
    let body = get_bytes(&registry, &path, None).await;
    assert_eq!(sha256_digest(&body), digest, "alone again");
    assert_eq!(settled().await, before, "alone again: copied");
}
