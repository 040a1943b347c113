//! `berth tag history|rollback` (the binary) against a real server: output,
//! exit status and the registry's message on failure, the Docker token flow
//! and Basic logins, and HTTPS with a private CA.

use std::process::{Output, Stdio};

use crate::support::*;
use reqwest::{Client, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Runs `berth tag <args>` with `stdin` as its input and nothing from the
/// test's environment that would change how it logs in.
async fn berth_tag(args: &[&str], envs: &[(&str, &str)], stdin: &str) -> Output {
    let mut command = Command::new(BERTH);
    command
        .arg("tag")
        .args(args)
        .env_remove("BERTH_PASSWORD")
        .env_remove("BERTH_USERNAME")
        .env_remove("BERTH_REGISTRY")
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("berth runs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "berth failed: {}{}",
        stderr(out),
        stdout(out)
    );
}

/// The digest `name:tag` serves, as `client`.
async fn current(registry: &TestRegistry, client: &Client, name: &str, tag: &str) -> String {
    let resp = client
        .head(registry.url(&format!("/v2/{name}/manifests/{tag}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::OK).await;
    header_str(&resp, "docker-content-digest").to_owned()
}

#[tokio::test]
async fn cli_prints_the_history_and_rolls_a_tag_back() {
    let registry = TestRegistry::start_with(uncached_on_s3).await;
    let (_, a) = registry.push_image("team/app", "v1", b"a").await;
    let (_, b) = registry.push_image("team/app", "v1", b"b").await;
    let url = registry.url("");

    let out = berth_tag(&["history", "team/app:v1", "--registry", &url], &[], "").await;
    assert_success(&out);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("team/app:v1 -> {b}"));
    assert!(lines[1].starts_with("TIME"), "{text}");
    assert!(
        lines[2].contains(&b) && lines[2].ends_with("current"),
        "{text}"
    );
    assert!(
        lines[3].contains(&a) && !lines[3].ends_with("current"),
        "{text}"
    );
    assert_eq!(lines.len(), 4, "{text}");

    let out = berth_tag(&["rollback", "team/app:v1", "--registry", &url], &[], "").await;
    assert_success(&out);
    assert_eq!(stdout(&out).trim(), format!("team/app:v1 -> {a} (was {b})"));
    assert_eq!(
        current(&registry, &registry.client, "team/app", "v1").await,
        a
    );

    let out = berth_tag(
        &["rollback", "team/app:v1", "--registry", &url, "--to", &b],
        &[],
        "",
    )
    .await;
    assert_success(&out);
    assert_eq!(
        current(&registry, &registry.client, "team/app", "v1").await,
        b
    );

    let out = berth_tag(
        &["history", "team/app:v1", "--registry", &url, "-n", "1"],
        &[],
        "",
    )
    .await;
    assert_success(&out);
    assert_eq!(stdout(&out).lines().count(), 3, "header and one change");
}

#[tokio::test]
async fn cli_fails_with_the_registrys_message() {
    let registry = TestRegistry::start_with(|config| {
        config.lifecycle =
            toml::from_str("[[immutable_tags]]\nrepositories = \"*\"\ntags = \"v.*\"\n").unwrap();
    })
    .await;
    let (_, a) = registry.push_image("app", "v1", b"a").await;
    let url = registry.url("");
    let out = berth_tag(&["rollback", "app:v1", "--registry", &url], &[], "").await;
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("403 DENIED")
            && message.contains("immutable")
            && message.contains("app:v1"),
        "{message}"
    );
    assert_eq!(current(&registry, &registry.client, "app", "v1").await, a);

    let out = berth_tag(&["history", "app:nope", "--registry", &url], &[], "").await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("MANIFEST_UNKNOWN"),
        "{}",
        stderr(&out)
    );
    let out = berth_tag(&["history", "App:v1", "--registry", &url], &[], "").await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid repository name"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn cli_logs_in_with_the_token_flow_and_rolls_back() {
    let mut registry = start_with_app_rules(r#"challenge = "bearer""#).await;
    let (a, b) = seed_app_web(&mut registry).await;
    let erin = client_with_authorization(&basic_auth("erin", "erin-pw"));
    let url = registry.url("");

    let out = berth_tag(&["history", "app/web", "--registry", &url], &[], "").await;
    assert!(!out.status.success(), "anonymous may not read it");
    assert!(stderr(&out).contains("--username"), "{}", stderr(&out));

    let login = ["--registry", &url, "--username", "erin", "--password-stdin"];
    let out = berth_tag(
        &[&["history", "app/web:latest"], &login[..]].concat(),
        &[],
        "erin-pw\n",
    )
    .await;
    assert_success(&out);
    assert!(stdout(&out).contains(&a), "{}", stdout(&out));

    let out = berth_tag(
        &[&["rollback", "app/web:latest"], &login[..]].concat(),
        &[],
        "erin-pw\n",
    )
    .await;
    assert_success(&out);
    assert_eq!(current(&registry, &erin, "app/web", "latest").await, a);

    // bob may push but not delete: his token is cut down, and he is told why.
    let out = berth_tag(
        &[
            "rollback",
            "app/web:latest",
            "--registry",
            &url,
            "-u",
            "bob",
        ],
        &[("BERTH_PASSWORD", "bob-pw")],
        "",
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("user bob may not do this")
            && stderr(&out).contains("repository:app/web:pull,push,delete"),
        "{}",
        stderr(&out)
    );
    let out = berth_tag(
        &[
            "rollback",
            "app/web:latest",
            "--registry",
            &url,
            "-u",
            "erin",
        ],
        &[("BERTH_PASSWORD", "not-erins-pw-8c1f")],
        "",
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("login as erin failed"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("not-erins-pw-8c1f"),
        "the password is never printed"
    );
    assert_eq!(current(&registry, &erin, "app/web", "latest").await, a);
    assert_ne!(a, b);
}

#[tokio::test]
async fn cli_sends_basic_credentials_when_challenged_with_basic() {
    let mut registry = start_with_app_rules(r#"challenge = "basic""#).await;
    let (a, b) = seed_app_web(&mut registry).await;
    let erin = client_with_authorization(&basic_auth("erin", "erin-pw"));
    let url = registry.url("");
    let out = berth_tag(
        &[
            "rollback",
            "app/web:latest",
            "--registry",
            &url,
            "-u",
            "erin",
            "--to",
            &a,
        ],
        &[("BERTH_PASSWORD", "erin-pw")],
        "",
    )
    .await;
    assert_success(&out);
    assert_eq!(
        stdout(&out).trim(),
        format!("app/web:latest -> {a} (was {b})")
    );
    assert_eq!(current(&registry, &erin, "app/web", "latest").await, a);
    let out = berth_tag(
        &[
            "rollback",
            "app/web:latest",
            "--registry",
            &url,
            "-u",
            "bob",
        ],
        &[("BERTH_PASSWORD", "bob-pw")],
        "",
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("403 DENIED"), "{}", stderr(&out));
}

#[tokio::test]
async fn cli_trusts_a_private_ca_over_https() {
    // Pushed over plain HTTP, then served from the same storage over HTTPS.
    let registry = TestRegistry::start().await;
    let (_, a) = registry.push_image("app", "v1", b"a").await;
    let (_, b) = registry.push_image("app", "v1", b"b").await;
    let https = registry
        .another_server(|config| {
            config.tls_cert = Some(testdata("server.crt"));
            config.tls_key = Some(testdata("server.key"));
        })
        .await;
    let url = format!("https://localhost:{}", https.addr.port());
    let ca = testdata("test-ca.crt");
    let ca = ca.to_str().unwrap();

    let out = berth_tag(&["history", "app:v1", "--registry", &url], &[], "").await;
    assert!(
        !out.status.success(),
        "the test CA is not trusted by default"
    );
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));

    let with_ca = ["--registry", &url, "--ca-cert", ca];
    let out = berth_tag(&[&["history", "app:v1"], &with_ca[..]].concat(), &[], "").await;
    assert_success(&out);
    assert!(
        stdout(&out).starts_with(&format!("app:v1 -> {b}")),
        "{}",
        stdout(&out)
    );
    let out = berth_tag(&[&["rollback", "app:v1"], &with_ca[..]].concat(), &[], "").await;
    assert_success(&out);
    assert_eq!(stdout(&out).trim(), format!("app:v1 -> {a} (was {b})"));
}
