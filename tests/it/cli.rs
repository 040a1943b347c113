//! The `berth` binary itself: flags, config precedence, logs, graceful shutdown.

use crate::support::backend::{backend, Backend};
use crate::support::{ServeProcess, BERTH};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn version_flag_prints_the_version() {
    let out = Command::new(BERTH).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("berth {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Whether a server has used `dir` as its data directory: the store's root
/// is made there on the filesystem; on S3 the blob cache is.
fn used_as_data_dir(dir: &Path) -> bool {
    match backend() {
        Backend::Filesystem => dir.join("docker/registry/v2").is_dir(),
        Backend::S3 => dir.join("s3-cache").is_dir(),
    }
}

#[test]
fn flags_override_env_which_overrides_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    let from_file = dir.path().join("file-data");
    let from_env = dir.path().join("env-data");
    let from_flag = dir.path().join("flag-data");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nlog_level = \"info\"\n",
            from_file
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let served = ServeProcess::start(&["--config", config], &[]);
    drop(served);
    assert!(used_as_data_dir(&from_file), "file's data_dir used");

    let served = ServeProcess::start(
        &["--config", config],
        &[("BERTH_DATA_DIR", from_env.to_str().unwrap())],
    );
    drop(served);
    assert!(used_as_data_dir(&from_env), "env beats file");

    let served = ServeProcess::start(
        &[
            "--config",
            config,
            "--data-dir",
            from_flag.to_str().unwrap(),
        ],
        &[("BERTH_DATA_DIR", from_env.to_str().unwrap())],
    );
    drop(served);
    assert!(used_as_data_dir(&from_flag), "flag beats env");
}

#[test]
fn a_bad_config_file_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(&config, "no_such_key = 1\n").unwrap();
    let out = Command::new(BERTH)
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_key"));
}

#[test]
fn json_logs_have_one_line_per_request_without_query_strings() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = ServeProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--log-format",
            "json",
        ],
        &[],
    );
    let response = served.request("GET /v2/some/repo/tags/list?n=1&last=secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    let line = served.next_log_line();
    let entry: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let fields = &entry["fields"];
    assert_eq!(fields["method"], "GET");
    assert_eq!(fields["path"], "/v2/some/repo/tags/list");
    assert_eq!(fields["status"], 404);
    assert!(fields["duration_ms"].is_number());
    assert!(fields["response_bytes"].as_u64().unwrap() > 0);
    assert!(
        !line.contains("secret"),
        "query strings are not logged: {line}"
    );
}

#[test]
fn sigterm_lets_an_in_flight_upload_finish() {
    let dir = tempfile::tempdir().unwrap();
    let served = ServeProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let start = served.request("POST /v2/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let location = start
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .expect("Location")
        .trim()
        .to_owned();

    // Send half a chunk, then SIGTERM, then the rest: the request must complete.
    let mut stream = TcpStream::connect(&served.addr).unwrap();
    let body = vec![b'x'; 1 << 20];
    write!(
        stream,
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    served.terminate();
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(&body[body.len() / 2..]).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    assert!(
        response
            .to_lowercase()
            .contains(&format!("range: 0-{}", body.len() - 1)),
        "{response}"
    );

    let mut served = served;
    let status = served.child.wait().unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    // New connections are refused once it has stopped.
    assert!(TcpStream::connect(&served.addr).is_err());
}
