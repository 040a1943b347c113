//! Robot accounts made through the API (`/v2/_berth/robots`) over real
//! HTTP with access control: a namespace's manager makes a robot for CI,
//! which logs in (Basic and token) and pushes inside the namespace only;
//! its secret is shown once and never listed; a new secret retires the old
//! one; revoking locks it out of logins. Who may make what is bounded by what the
//! maker manages. On S3 the requests alternate between two replicas, so a
//! robot made on one logs in on the other.

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// The registry of `settings.rs`: alice an admin, bob in group devs (and
/// pull and push on app/* by the rules), carol with no rule of her own.
use crate::settings::{as_user, start, upload_start_status};
use crate::support::*;

/// alice hands namespace `team` to group devs: pull, push and manage.
async fn hand_team_to_devs(registry: &TestRegistry) {
    let resp = as_user("alice")
        .put(registry.url("/v2/_berth/namespaces/team"))
        .json(
            &json!({"grants": [{"subject": "group:devs", "actions": ["pull", "push", "manage"]}]}),
        )
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::OK).await;
}

async fn create(registry: &TestRegistry, client: &Client, body: Value) -> reqwest::Response {
    client
        .post(registry.url("/v2/_berth/robots"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn listed(registry: &TestRegistry, client: &Client) -> Value {
    let resp = client
        .get(registry.url("/v2/_berth/robots"))
        .send()
        .await
        .unwrap();
    json_of(resp, StatusCode::OK).await
}

fn names(list: &Value) -> Vec<&str> {
    list["robots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect()
}

/// alice grants `robot:deploy` rights on `repository`; then bob, a manager
/// of namespace team, asks for a robot of that name there: the 409's text.
async fn deploy_refused_once_granted_on(registry: &TestRegistry, repository: &str) -> String {
    let resp = as_user("alice")
        .put(registry.url(&format!("/v2/{repository}/_berth/settings")))
        .json(&json!({"grants": [{"subject": "robot:deploy", "actions": ["pull", "push"]}]}))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::OK).await;
    let resp = create(
        registry,
        &as_user("bob"),
        json!({"name": "deploy", "namespace": "team", "grants": ["team/*:pull"]}),
    )
    .await;
    let resp = expect_status(resp, StatusCode::CONFLICT).await;
    resp.text().await.unwrap()
}

#[tokio::test]
async fn a_namespace_manager_makes_a_robot_that_pushes_there_until_it_is_revoked() {
    let mut registry = start().await;
    hand_team_to_devs(&registry).await;
    let (bob, carol) = (as_user("bob"), as_user("carol"));

    let resp = create(
        &registry,
        &bob,
        json!({"name": "team-ci", "namespace": "team", "grants": ["team/*:pull,push"], "expires_in": "90d"}),
    )
    .await;
    assert_eq!(
        resp.headers()["cache-control"],
        "no-store",
        "the secret is not cached"
    );
    let made = json_of(resp, StatusCode::CREATED).await;
    assert_eq!(made["username"], "robot$team-ci");
    assert_eq!(made["namespace"], "team");
    assert_eq!(made["created_by"], "bob");
    assert_eq!(made["grants"], json!(["team/*:pull,push"]));
    assert!(made["expires_at"].as_str().unwrap().starts_with("20"));
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 40, "{secret}");

    // The robot pushes inside its grants, with Basic and with a token.
    let robot = client_with_authorization(&basic_auth("robot$team-ci", &secret));
    registry.client = robot.clone();
    registry
        .push_image("team/api", "1", &random_bytes(3000, 1))
        .await;
    registry.client = new_client();
    assert_eq!(
        upload_start_status(&registry, &robot, "app/web").await,
        StatusCode::FORBIDDEN
    );
    let robot_token = token(
        &registry,
        Some(&basic_auth("robot$team-ci", &secret)),
        &["repository:team/api:pull,push"],
    )
    .await;
    let with_token = client_with_authorization(&format!("Bearer {robot_token}"));
    assert_eq!(
        upload_start_status(&registry, &with_token, "team/api").await,
        StatusCode::ACCEPTED
    );

    // Listed for its managers, without its secret; not for others.
    let list = listed(&registry, &bob).await;
    assert_eq!(names(&list), ["team-ci"]);
    let text = list.to_string();
    assert!(
        !text.contains(&secret) && !text.contains("secret"),
        "{text}"
    );
    assert_eq!(names(&listed(&registry, &carol).await), Vec::<&str>::new());
    let resp = new_client()
        .get(registry.url("/v2/_berth/robots"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::UNAUTHORIZED).await;

    // A new secret retires the old one.
    let secret_url = registry.url("/v2/_berth/robots/team-ci/secret");
    let resp = carol.post(&secret_url).send().await.unwrap();
    expect_status(resp, StatusCode::NOT_FOUND).await;
    let fresh = json_of(bob.post(&secret_url).send().await.unwrap(), StatusCode::OK).await;
    let new_secret = fresh["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(
        upload_start_status(&registry, &robot, "team/api").await,
        StatusCode::UNAUTHORIZED
    );
    let robot = client_with_authorization(&basic_auth("robot$team-ci", &new_secret));
    assert_eq!(
        upload_start_status(&registry, &robot, "team/api").await,
        StatusCode::ACCEPTED
    );

    // Revoked: its secret no longer logs in, nor gets a token (one issued
    // before lasts until it expires, at most the token TTL, as for the
    // robot file's robots).
    let robot_url = registry.url("/v2/_berth/robots/team-ci");
    let resp = carol.delete(&robot_url).send().await.unwrap();
    expect_status(resp, StatusCode::NOT_FOUND).await;
    let resp = bob.delete(&robot_url).send().await.unwrap();
    expect_status(resp, StatusCode::NO_CONTENT).await;
    assert_eq!(
        upload_start_status(&registry, &robot, "team/api").await,
        StatusCode::UNAUTHORIZED
    );
    let resp = new_client()
        .get(registry.url("/auth/token?service=berth&scope=repository:team/api:pull"))
        .header("authorization", basic_auth("robot$team-ci", &new_secret))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::UNAUTHORIZED).await;
    let resp = bob.delete(&robot_url).send().await.unwrap();
    let resp = expect_status(resp, StatusCode::NOT_FOUND).await;
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn what_a_robot_may_do_is_bounded_by_what_its_maker_manages() {
    let registry = start().await;
    hand_team_to_devs(&registry).await;
    let (alice, bob, carol) = (as_user("alice"), as_user("bob"), as_user("carol"));
    let refused = |body: Value, status: StatusCode, code: &'static str| {
        let (registry, client) = (&registry, if code == "DENIED" { &bob } else { &alice });
        async move {
            let resp = create(registry, client, body.clone()).await;
            let resp = expect_status_of(resp, status, &body.to_string()).await;
            assert_eq!(error_code(resp).await, code, "{body}");
        }
    };
    // Beyond bob's rights: no namespace, a namespace he does not manage,
    // a grant outside it, an action he lacks there.
    for body in [
        json!({"name": "x", "grants": ["team/*:pull"]}),
        json!({"name": "x", "namespace": "app", "grants": ["app/*:pull"]}),
        json!({"name": "x", "namespace": "team", "grants": ["other/*:pull"]}),
        json!({"name": "x", "namespace": "team", "grants": ["team*:pull"]}),
        json!({"name": "x", "namespace": "team", "grants": ["team/*:delete"]}),
    ] {
        refused(body, StatusCode::FORBIDDEN, "DENIED").await;
    }
    let resp = create(
        &registry,
        &carol,
        json!({"name": "x", "namespace": "team", "grants": ["team/*:pull"]}),
    )
    .await;
    expect_status(resp, StatusCode::FORBIDDEN).await;
    // Malformed, even from an admin.
    for body in [
        json!({"name": "Bad Name", "grants": ["team/*:pull"]}),
        json!({"name": "x", "grants": []}),
        json!({"name": "x", "grants": ["team/*:fly"]}),
        json!({"name": "x", "grants": ["Team/*:pull"]}),
        json!({"name": "x", "grants": ["team/*:pull"], "expires_in": "0s"}),
        json!({"name": "x", "grants": ["team/*:pull"], "expires_in": "300000000000y"}),
        json!({"name": "x", "grants": ["team/*:pull"], "namespace": "Team"}),
        json!({"name": "x", "grants": ["team/*:pull"], "admin": true}),
        json!("not an object"),
    ] {
        refused(body, StatusCode::BAD_REQUEST, "PARAMETER_INVALID").await;
    }
    assert_eq!(names(&listed(&registry, &alice).await), Vec::<&str>::new());

    // A name is unique across the API's robots and the robot file's.
    let secret = berth::auth::RobotStore::open(&registry.robots_path())
        .unwrap()
        .create("from-file", vec![], None)
        .unwrap();
    let good = json!({"name": "team-ci", "namespace": "team", "grants": ["team/*:pull"]});
    expect_status(
        create(&registry, &bob, good.clone()).await,
        StatusCode::CREATED,
    )
    .await;
    for name in ["team-ci", "from-file"] {
        let mut again = good.clone();
        again["name"] = json!(name);
        let resp = create(&registry, &alice, again).await;
        expect_status_of(resp, StatusCode::CONFLICT, name).await;
    }
    // Admins make robots anywhere, see the file's (read-only here) too.
    let resp = create(
        &registry,
        &alice,
        json!({"name": "deployer", "grants": ["*:pull", "app/*:push,delete"]}),
    )
    .await;
    expect_status(resp, StatusCode::CREATED).await;
    let list = listed(&registry, &alice).await;
    assert_eq!(names(&list), ["deployer", "from-file", "team-ci"]);
    assert_eq!(list["robots"][1]["source"], "file");
    let resp = alice
        .delete(registry.url("/v2/_berth/robots/from-file"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::FORBIDDEN).await;
    let file_robot = client_with_authorization(&basic_auth("robot$from-file", secret.expose()));
    assert_eq!(
        file_robot
            .get(registry.url("/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "the file's robot still logs in"
    );
    // A robot of a namespace stays inside it, an admin's too.
    let resp = create(
        &registry,
        &alice,
        json!({"name": "wide", "namespace": "team", "grants": ["*:pull"]}),
    )
    .await;
    expect_status(resp, StatusCode::FORBIDDEN).await;
    // bob sees only the robot of his namespace.
    assert_eq!(names(&listed(&registry, &bob).await), ["team-ci"]);
    let resp = bob
        .delete(registry.url("/v2/_berth/robots/deployer"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::NOT_FOUND).await;

    // A robot of bob's namespace with a right bob lacks (delete): he may
    // revoke it, not take its secret.
    let resp = create(
        &registry,
        &alice,
        json!({"name": "cleaner", "namespace": "team", "grants": ["team/*:pull,delete"]}),
    )
    .await;
    expect_status(resp, StatusCode::CREATED).await;
    let resp = bob
        .post(registry.url("/v2/_berth/robots/cleaner/secret"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    assert!(resp.text().await.unwrap().contains("every right it has"));
    let resp = bob
        .delete(registry.url("/v2/_berth/robots/cleaner"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::NO_CONTENT).await;

    // A name that settings elsewhere still grant to is not bob's to take:
    // the new robot would inherit what they grant.
    let refusal = deploy_refused_once_granted_on(&registry, "app/web").await;
    assert!(refusal.contains("app/web"), "{refusal}");
}

#[tokio::test]
async fn an_expired_robot_is_refused() {
    let registry = start().await;
    let made = json_of(
        create(
            &registry,
            &as_user("alice"),
            json!({"name": "brief", "grants": ["app/*:pull"], "expires_in": "1s"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let robot =
        client_with_authorization(&basic_auth("robot$brief", made["secret"].as_str().unwrap()));
    // Expiry is kept to the second: past it for certain after two.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let resp = robot.get(registry.url("/v2/")).send().await.unwrap();
    expect_status(resp, StatusCode::UNAUTHORIZED).await;
    let list = listed(&registry, &as_user("alice")).await;
    assert_eq!(list["robots"][0]["expired"], true);
}

#[tokio::test]
async fn without_access_control_there_are_no_robots() {
    let registry = TestRegistry::start().await;
    let resp = registry
        .client
        .get(registry.url("/v2/_berth/robots"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, StatusCode::METHOD_NOT_ALLOWED).await;
    assert_eq!(error_code(resp).await, "UNSUPPORTED");
}

/// A robot may log in to the web UI; its session ends with it or with its
/// secret, and does not carry over to a robot made later under its name.
#[tokio::test]
async fn a_robots_ui_session_ends_with_it_and_never_becomes_a_later_namesakes() {
    let registry = start().await;
    let alice = as_user("alice");
    let make = || async {
        let resp = create(
            &registry,
            &alice,
            json!({"name": "viewer", "grants": ["app/*:pull"]}),
        )
        .await;
        let made = json_of(resp, StatusCode::CREATED).await;
        made["secret"].as_str().unwrap().to_owned()
    };
    let whoami = |session: String| {
        let url = registry.url("/ui/api/session");
        async move {
            let resp = crate::ui::cookie_client(&session, true)
                .get(url)
                .send()
                .await
                .unwrap();
            json_of(resp, StatusCode::OK).await["user"].clone()
        }
    };
    let secret = make().await;
    let resp = crate::ui::login(&registry, "robot$viewer", &secret).await;
    let session = crate::ui::session_of(&resp);
    expect_status(resp, StatusCode::OK).await;
    assert_eq!(whoami(session.clone()).await, "robot$viewer");

    let resp = alice
        .delete(registry.url("/v2/_berth/robots/viewer"))
        .send()
        .await
        .unwrap();
    expect_status(resp, StatusCode::NO_CONTENT).await;
    assert_eq!(whoami(session.clone()).await, Value::Null);
    // Made again a second later (times are kept to the second).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let secret = make().await;
    assert_eq!(whoami(session).await, Value::Null, "the old session");
    let resp = crate::ui::login(&registry, "robot$viewer", &secret).await;
    let session = crate::ui::session_of(&resp);
    assert_eq!(whoami(session.clone()).await, "robot$viewer");

    // A new secret (a leaked one replaced) ends the sessions got with the
    // old one, a second later as above. (A bearer token got with it lasts
    // until it expires, at most the token TTL, as after a revocation.)
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let resp = alice
        .post(registry.url("/v2/_berth/robots/viewer/secret"))
        .send()
        .await
        .unwrap();
    let renewed = json_of(resp, StatusCode::OK).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        whoami(session).await,
        Value::Null,
        "the old secret's session"
    );
    let resp = crate::ui::login(&registry, "robot$viewer", &renewed).await;
    let session = crate::ui::session_of(&resp);
    assert_eq!(whoami(session).await, "robot$viewer");
}

/// What a namespace's manager hands out is bounded by what they hold: in a
/// repository's settings (no `delete` for themselves or a robot; an
/// admin's grant left as it is), and in robots, which count against one
/// cap for the whole namespace however many namespaces below it they are
/// spread over. A repository named like the namespace is outside it.
#[tokio::test]
async fn a_manager_hands_out_only_what_they_hold_and_one_cap_covers_their_namespace() {
    let registry = start().await;
    hand_team_to_devs(&registry).await;
    let (alice, bob) = (as_user("alice"), as_user("bob"));
    let settings_url = registry.url("/v2/team/api/_berth/settings");
    let put = |client: &Client, body: Value| client.put(&settings_url).json(&body).send();

    // bob holds pull, push and manage over team/: not delete.
    let resp = put(
        &bob,
        json!({"grants": [{"subject": "user:bob", "actions": ["pull", "delete"]}]}),
    )
    .await
    .unwrap();
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    let detail = body["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("delete") && detail.contains("user:bob"),
        "{detail}"
    );
    let resp = put(
        &bob,
        json!({"grants": [{"subject": "user:carol", "actions": ["pull", "push"]}]}),
    )
    .await
    .unwrap();
    expect_status(resp, StatusCode::OK).await;
    // An admin grants delete to a robot; bob may keep that grant while he
    // changes the rest, but not give delete to anyone else.
    let admins = json!({"subject": "robot:cleaner", "actions": ["delete"]});
    let resp = put(&alice, json!({"grants": [admins.clone()]}))
        .await
        .unwrap();
    expect_status(resp, StatusCode::OK).await;
    let resp = put(
        &bob,
        json!({"description": "the API", "grants": [admins.clone()]}),
    )
    .await
    .unwrap();
    expect_status(resp, StatusCode::OK).await;
    let resp = put(
        &bob,
        json!({"grants": [admins, {"subject": "user:carol", "actions": ["delete"]}]}),
    )
    .await
    .unwrap();
    expect_status(resp, StatusCode::FORBIDDEN).await;

    // The repository named `team` is not in namespace team: a name its
    // settings grant to is not bob's to take.
    let refusal = deploy_refused_once_granted_on(&registry, "team").await;
    assert!(refusal.contains("the settings of team grant"), "{refusal}");

    // 100 robots spread over team/n0 ... team/n99 fill team's cap.
    for n in 0..100 {
        let resp = create(
            &registry,
            &bob,
            json!({"name": format!("r{n}"), "namespace": format!("team/n{n}"), "grants": [format!("team/n{n}/*:pull")]}),
        )
        .await;
        expect_status(resp, StatusCode::CREATED).await;
    }
    let resp = create(
        &registry,
        &bob,
        json!({"name": "one-more", "namespace": "team/other", "grants": ["team/other/*:pull"]}),
    )
    .await;
    let resp = expect_status(resp, StatusCode::FORBIDDEN).await;
    let body: Value = resp.json().await.unwrap();
    let detail = body["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("namespace team and those below it"),
        "{detail}"
    );
    // Admins are not bound by a namespace's cap.
    let resp = create(
        &registry,
        &alice,
        json!({"name": "one-more", "namespace": "team/other", "grants": ["team/other/*:pull"]}),
    )
    .await;
    expect_status(resp, StatusCode::CREATED).await;
}
