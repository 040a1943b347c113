//! The Garage fixture (`support::garage`, `tests/garage.sh`) works: objects
//! written through object_store come back, listings see only a test's own
//! prefix, a 3-node cluster keeps quorum with one node stopped (and loses it
//! with two, so a stop is real), and the nodes stop by themselves once the
//! process that started them is gone.
//!
//! Every test here needs Garage: tests/run.sh runs the tests whose names hold
//! `garage_` once its Garage build is done.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, RetryConfig};

use crate::support::garage::{garage_or_skip, Garage};
use crate::support::random_bytes;

/// The keys under `prefix`, sorted, with their sizes.
async fn listing(store: &dyn ObjectStore, prefix: &str) -> Vec<(String, u64)> {
    let mut objects: Vec<(String, u64)> = store
        .list(Some(&Path::from(prefix)))
        .map_ok(|meta| (meta.location.to_string(), meta.size))
        .try_collect()
        .await
        .expect("list");
    objects.sort();
    objects
}

#[tokio::test]
async fn objects_put_on_the_shared_cluster_read_and_list_back() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::shared();
    let store = garage.store();
    let prefix = garage.prefix();
    let other = garage.prefix();
    assert_ne!(prefix, other, "each call gives a fresh prefix");

    // Two blocks and a bit (Garage splits objects into 1 MiB blocks).
    let big = random_bytes(2 * 1024 * 1024 + 7, 13);
    let a = Path::from(format!("{prefix}/a"));
    let b = Path::from(format!("{prefix}/dir/b"));
    store.put(&a, big.clone().into()).await.expect("put a");
    store.put(&b, "small".into()).await.expect("put b");
    store
        .put(&Path::from(format!("{other}/c")), "elsewhere".into())
        .await
        .expect("put c");

    let got = store.get(&a).await.expect("get a").bytes().await.unwrap();
    assert!(got == big, "a came back different ({} bytes)", got.len());
    let got = store.get(&b).await.expect("get b").bytes().await.unwrap();
    assert_eq!(&got[..], b"small");
    let missing = store.get(&Path::from(format!("{prefix}/never"))).await;
    assert!(
        matches!(missing, Err(object_store::Error::NotFound { .. })),
        "a key never written is not found: {missing:?}"
    );

    assert_eq!(
        listing(&store, &prefix).await,
        [(a.to_string(), big.len() as u64), (b.to_string(), 5)],
        "the listing holds this prefix's objects only"
    );
}

#[tokio::test]
async fn three_nodes_keep_quorum_with_one_stopped_and_lose_it_with_two() {
    if !garage_or_skip() {
        return;
    }
    let garage = Garage::start_cluster(3);
    let prefix = garage.prefix();
    let key = Path::from(format!("{prefix}/written-with-node-3-down"));
    let content = random_bytes(300_000, 3);

    garage.stop_node(3);
    let node1 = garage.store_at(garage.endpoint_of(1));
    node1
        .put(&key, content.clone().into())
        .await
        .expect("a write with 2 of 3 nodes up");
    let read = garage.store_at(garage.endpoint_of(2)).get(&key).await;
    let got = read.expect("a read through node 2").bytes().await.unwrap();
    assert!(got == content, "node 2 read what node 1 wrote");

    // Node 3, which missed the write, comes back and node 2 goes: nodes 1
    // and 3 are the read quorum, and node 1 has the object.
    garage.start_node(3);
    garage.stop_node(2);
    let node3 = garage.store_at(garage.endpoint_of(3));
    let got = node3
        .get(&key)
        .await
        .expect("a read through the restarted node 3")
        .bytes()
        .await
        .unwrap();
    assert!(got == content, "node 3 read it back");

    // With two of three down there is no quorum: the stops are real. (No
    // retries: Garage's 503 is final here, and object_store would retry it.)
    garage.stop_node(1);
    let no_retries = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    let node3_alone = garage
        .store_builder(garage.endpoint_of(3))
        .with_retry(no_retries)
        .build()
        .unwrap();
    let error = node3_alone
        .get(&key)
        .await
        .expect_err("a read with only node 3 up must fail (no quorum of 2)");
    assert!(
        error.to_string().contains("quorum"),
        "Garage's quorum error, not a timeout: {error}"
    );
}

/// The watchdog of tests/garage.sh: once the owner process is gone, the
/// nodes are killed and (with --remove) their directory deleted, so a test
/// binary that dies leaves nothing behind.
#[test]
fn garage_nodes_stop_when_their_owner_is_gone() {
    if !garage_or_skip() {
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("owned");
    std::fs::create_dir(&dir).unwrap();
    let mut owner = Command::new("sleep").arg("600").spawn().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/garage.sh");
    let output = Command::new(script)
        .arg("start")
        .arg(dir.join("cluster"))
        .args(["--owner", &owner.id().to_string()])
        .arg("--remove")
        .arg(&dir)
        .output()
        .unwrap();
    if !output.status.success() {
        let _ = owner.kill();
        let _ = owner.wait();
        panic!("start failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let pid_file = dir.join("cluster/node1/pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.trim();
    assert!(running(pid), "the node runs");

    owner.kill().unwrap();
    owner.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) || dir.exists() {
        assert!(
            Instant::now() < deadline,
            "10 s after its owner died: node running {}, directory there {}",
            running(pid),
            dir.exists()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` runs: it exists and is not a zombie (the node is
/// not our child, and whoever reaps it may take a moment).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().unwrap().split_whitespace().next() != Some("Z"))
}
