//! A round-robin TCP balancer in front of several servers, as a load
//! balancer in front of stateless replicas would be: each new connection
//! goes to the next backend in turn, so consecutive requests of a client that
//! opens a connection per request land on different replicas.
//! `tests/support/balancer.py` is the same for the script tests.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A balancer on `127.0.0.1:<free port>`; dropping it closes the listener
/// and every connection it carries.
pub struct Balancer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Balancer {
    /// Starts a balancer over `backends` (at least one): connection 1 goes to
    /// `backends[0]`, connection 2 to `backends[1]`, and so on, wrapping.
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        assert!(!backends.is_empty(), "a balancer needs a backend");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it (on drop) drops the set, which
            // aborts the connections too.
            let mut connections = JoinSet::new();
            for turn in 0.. {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let backend = backends[turn % backends.len()];
                connections.spawn(relay(client, backend));
                // Reap finished connections so the set does not grow.
                while connections.try_join_next().is_some() {}
            }
        });
        Balancer { addr, task }
    }
}

/// Copies bytes both ways between `client` and a new connection to
/// `backend`, each direction's end (FIN) passed on, until both have ended.
/// A backend that cannot be reached closes the client's connection, as a
/// balancer with a dead replica would.
async fn relay(mut client: TcpStream, backend: SocketAddr) {
    let Ok(mut upstream) = TcpStream::connect(backend).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

mod checks {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that answers each connection with `<name>:<what the client
    /// sent>` once the client has finished sending: the answer shows which
    /// backend took the connection, and that bytes went both ways.
    async fn named_server(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    stream.read_to_end(&mut request).await.unwrap();
                    let answer = format!("{name}:{}", String::from_utf8_lossy(&request));
                    stream.write_all(answer.as_bytes()).await.unwrap();
                });
            }
        });
        addr
    }

    /// Sends `request` on a new connection to `addr`, ends the sending side,
    /// and reads the answer until the server closes.
    async fn ask(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn consecutive_connections_take_turns_between_backends() {
        let a = named_server("A").await;
        let b = named_server("B").await;
        let balancer = Balancer::start(vec![a, b]).await;
        let mut answers = Vec::new();
        for i in 0..4 {
            answers.push(ask(balancer.addr, &format!("request {i}")).await);
        }
        assert_eq!(
            answers,
            ["A:request 0", "B:request 1", "A:request 2", "B:request 3"]
        );
    }

    #[tokio::test]
    async fn a_dropped_balancer_accepts_no_more_connections() {
        let a = named_server("A").await;
        let balancer = Balancer::start(vec![a]).await;
        let addr = balancer.addr;
        assert_eq!(ask(addr, "x").await, "A:x");
        drop(balancer);
        // The abort takes effect when the runtime next runs the task.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the listener is still open 2 s after the drop"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// tests/support/balancer.py, the script tests' copy, behaves the same.
    #[tokio::test]
    async fn the_python_balancer_takes_turns_too() {
        let a = named_server("A").await;
        let b = named_server("B").await;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/balancer.py");
        let mut balancer = KillOnDrop(
            Command::new("python3")
                .args([script, "0", &a.to_string(), &b.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 runs"),
        );
        // It prints the port it listens on, once it listens.
        let mut line = String::new();
        BufReader::new(balancer.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", line.trim()).parse().unwrap();
        let mut answers = Vec::new();
        for i in 0..3 {
            answers.push(ask(addr, &format!("r{i}")).await);
        }
        assert_eq!(answers, ["A:r0", "B:r1", "A:r2"]);
    }

    struct KillOnDrop(std::process::Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
