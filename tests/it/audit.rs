//! The audit log: a scripted session, then its lines, one per change and
//! per refused request, with no secret in them.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::*;

const USERS: &[(&str, &str)] = &[("alice", "alice-secret-pw"), ("bob", "bob-secret-pw")];

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn changes_and_refusals_are_audited_with_who_what_and_the_result_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let audit_path = path.clone();
    let mut registry = TestRegistry::start_one_with_auth_and(
        move |c| c.audit.path = Some(audit_path),
        USERS,
        r#"
        challenge = "basic"
        [[rules]]
        repositories = ["team/*"]
        users = { alice = ["pull", "push", "delete", "manage"], bob = ["pull"] }
        "#,
    )
    .await;
    let as_user = |user: &str| {
        let password = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
        client_with_authorization(&basic_auth(user, password))
    };
    registry.client = as_user("alice");
    let layer = random_bytes(20_000, 1);
    let (_, digest) = registry.push_image("team/app", "1", &layer).await;
    // Reads that succeed are not audited.
    expect_status(
        get(&registry, "/v2/team/app/manifests/1").await,
        StatusCode::OK,
    )
    .await;
    // bob may pull, not push.
    let resp = as_user("bob")
        .post(registry.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::FORBIDDEN).await;
    // Nobody anonymous pulls here; a wrong password is refused.
    let resp = new_client()
        .get(registry.url("/v2/team/app/manifests/1"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::UNAUTHORIZED).await;
    let resp = client_with_authorization(&basic_auth("alice", "not-alices-password"))
        .get(registry.url("/v2/team/app/manifests/1"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::UNAUTHORIZED).await;
    let resp = client_with_authorization(&basic_auth("bob", "not-bobs-password"))
        .get(registry.url("/auth/token?scope=repository:team/app:pull"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::UNAUTHORIZED).await;
    let resp = registry.delete_manifest("team/app", &digest).await;
    expect_status(resp, StatusCode::ACCEPTED).await;
    // A settings change, and one refused.
    for (user, status) in [("alice", StatusCode::OK), ("bob", StatusCode::FORBIDDEN)] {
        let resp = as_user(user)
            .put(registry.url("/v2/team/app/_berth/settings"))
            .body(r#"{"visibility": "public"}"#)
            .send()
            .await
            .unwrap();
        expect_status(resp, status).await;
    }
    // A robot made in alice's namespace (her rule covers team/*), its
    // secret renewed, then revoked; bob may not make one.
    let mut secrets = Vec::new();
    for (user, status) in [
        ("alice", StatusCode::CREATED),
        ("bob", StatusCode::FORBIDDEN),
    ] {
        let resp = as_user(user)
            .post(registry.url("/v2/_berth/robots"))
            .body(r#"{"name": "ci", "namespace": "team", "grants": ["team/*:pull"]}"#)
            .send()
            .await
            .unwrap();
        let body = expect_status(resp, status).await.text().await.unwrap();
        if let Some(secret) =
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["secret"].as_str()
        {
            secrets.push(secret.to_owned());
        }
    }
    let resp = as_user("alice")
        .post(registry.url("/v2/_berth/robots/ci/secret"))
        .send()
        .await
        .unwrap();
    let renewed: serde_json::Value = json_of(resp, StatusCode::OK).await;
    secrets.push(renewed["secret"].as_str().unwrap().to_owned());
    let resp = as_user("alice")
        .delete(registry.url("/v2/_berth/robots/ci"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::NO_CONTENT).await;
    assert_eq!(secrets.len(), 2);

    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in secrets.iter().map(String::as_str).chain([
        "alice-secret-pw",
        "bob-secret-pw",
        "not-alices-password",
        "not-bobs-password",
        "Basic ",
    ]) {
        assert!(!text.contains(secret), "{secret} in the audit log:\n{text}");
    }
    let lines = lines(&path);
    let brief: Vec<(String, String, String, String, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["action"].as_str().unwrap().to_owned(),
                l["actor"]["kind"].as_str().unwrap().to_owned(),
                l["actor"]["name"].as_str().unwrap_or("").to_owned(),
                l["repository"].as_str().unwrap_or("").to_owned(),
                l["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let s = |a: &str, k: &str, n: &str, r: &str, st: u64| {
        (a.to_owned(), k.to_owned(), n.to_owned(), r.to_owned(), st)
    };
    assert_eq!(
        brief,
        vec![
            // The config and the layer, then the manifest.
            s("upload", "user", "alice", "team/app", 201),
            s("upload", "user", "alice", "team/app", 201),
            s("push", "user", "alice", "team/app", 201),
            s("upload", "user", "bob", "team/app", 403),
            s("pull", "anonymous", "", "team/app", 401),
            s("pull", "claimed", "alice", "team/app", 401),
            s("login", "claimed", "bob", "", 401),
            s("delete", "user", "alice", "team/app", 202),
            s("settings", "user", "alice", "team/app", 200),
            s("settings", "user", "bob", "team/app", 403),
            s("robot_create", "user", "alice", "", 201),
            s("robot_create", "user", "bob", "", 403),
            s("robot_secret", "user", "alice", "", 200),
            s("robot_revoke", "user", "alice", "", 204),
        ],
        "{text}"
    );
    // The robot each robot line is about: the made one's from its answer.
    let robots: Vec<&str> = lines
        .iter()
        .filter(|l| l["action"].as_str().unwrap().starts_with("robot_"))
        .map(|l| l["reference"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(robots, ["ci", "", "ci", "ci"], "{text}");
    let push = &lines[2];
    assert_eq!(push["reference"], "1");
    assert_eq!(push["digest"], digest.as_str());
    assert_eq!(push["result"], "ok");
    assert_eq!(push["client"], "127.0.0.1");
    assert!(push["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[3]["result"], "refused");
    assert_eq!(lines[7]["reference"], digest.as_str());
    assert_eq!(lines[12]["reference"], "ci");
    assert_eq!(lines[13]["reference"], "ci");
}
