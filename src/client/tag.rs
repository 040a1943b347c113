//! `berth tag history|rollback NAME[:TAG] --registry URL`: the tag history
//! extension (`/v2/<name>/_berth/tags/<tag>/…`, see `http/tag_history.rs`)
//! from the command line, against a running registry.

use std::io::BufRead;
use std::path::PathBuf;

use hyper::{Method, StatusCode};
use serde::Deserialize;

use super::{Credentials, RegistryClient};
use crate::auth::Secret;
use crate::oci::{Digest, RepositoryName, Tag};

#[derive(clap::Subcommand)]
pub enum TagCommand {
    /// Show every change of a tag, newest first.
    History {
        /// The tag, as NAME:TAG (TAG defaults to latest).
        reference: String,
        /// Show at most this many changes.
        #[arg(short = 'n', long)]
        limit: Option<usize>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Point a tag back at an earlier image from its history.
    Rollback {
        /// The tag, as NAME:TAG (TAG defaults to latest).
        reference: String,
        /// The image to go back to (it must be in the tag's history).
        #[arg(long, conflicts_with = "steps")]
        to: Option<String>,
        /// How many distinct images to go back [default: 1, the image before
        /// the current one].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        steps: Option<u64>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// Where the registry is and how to log in to it.
#[derive(clap::Args)]
pub struct RemoteArgs {
    /// The registry, e.g. https://registry.example.com (https is assumed
    /// without a scheme).
    #[arg(long, env = "BERTH_REGISTRY")]
    registry: String,
    /// Log in as this user (the password comes from --password-stdin or the
    /// environment variable BERTH_PASSWORD).
    #[arg(long, short = 'u', env = "BERTH_USERNAME")]
    username: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Also trust the CA certificates in this PEM file (a private CA).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

impl RemoteArgs {
    fn client(&self) -> Result<RegistryClient, String> {
        let credentials = match &self.username {
            None => None,
            Some(username) => Some(Credentials {
                username: username.clone(),
                password: self.password()?,
            }),
        };
        RegistryClient::new(&self.registry, credentials, self.ca_cert.clone())
    }

    fn password(&self) -> Result<Secret, String> {
        if self.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| format!("reading the password from stdin: {e}"))?;
            let password = line.trim_end_matches(['\n', '\r']);
            return Ok(Secret::new(password));
        }
        match std::env::var("BERTH_PASSWORD") {
            Ok(password) => Ok(Secret::new(password)),
            Err(_) => {
                Err("a password is needed: give --password-stdin or set BERTH_PASSWORD".into())
            }
        }
    }
}

/// `berth tag …`: runs the command, telling the user what failed.
pub fn main(command: TagCommand) -> std::process::ExitCode {
    match run(command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a `berth tag` command; the error is what to tell the user.
pub fn run(command: TagCommand) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async {
        match command {
            TagCommand::History {
                reference,
                limit,
                remote,
            } => history(&reference, limit, &remote).await,
            TagCommand::Rollback {
                reference,
                to,
                steps,
                remote,
            } => rollback(&reference, to.as_deref(), steps, &remote).await,
        }
    })
}

/// `NAME[:TAG]`, both checked against the spec's grammars before any request.
fn parse_reference(reference: &str) -> Result<(RepositoryName, Tag), String> {
    // A name has no `:`, a tag no `/`: the tag is after the last `:` unless
    // a `/` follows it.
    let (name, tag) = match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (reference, "latest"),
    };
    let name =
        RepositoryName::parse(name).ok_or_else(|| format!("invalid repository name {name:?}"))?;
    let tag = Tag::parse(tag).ok_or_else(|| format!("invalid tag {tag:?}"))?;
    Ok((name, tag))
}

#[derive(Deserialize)]
struct History {
    current: Option<String>,
    history: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    digest: Option<String>,
    time: String,
}

async fn history(reference: &str, limit: Option<usize>, remote: &RemoteArgs) -> Result<(), String> {
    let (name, tag) = parse_reference(reference)?;
    let mut client = remote.client()?;
    let mut path = format!("/v2/{name}/_berth/tags/{tag}/history");
    if let Some(n) = limit {
        path.push_str(&format!("?n={n}"));
    }
    let reply = client.send(Method::GET, &path).await?;
    if reply.status != StatusCode::OK {
        return Err(format!(
            "history of {name}:{tag}: {}",
            reply.error_message()
        ));
    }
    let history: History = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("the registry answered an unreadable history: {e}"))?;
    print!("{}", render_history(&format!("{name}:{tag}"), &history));
    Ok(())
}

/// A table, newest first; the change that made the tag what it is now is
/// marked `current` (only the newest entry can be).
fn render_history(reference: &str, history: &History) -> String {
    let mut out = match &history.current {
        Some(digest) => format!("{reference} -> {digest}\n"),
        None => format!("{reference} (deleted)\n"),
    };
    out.push_str(&format!("{:<32} {:<71} {}\n", "TIME", "DIGEST", ""));
    for (i, change) in history.history.iter().enumerate() {
        let (digest, marker) = match &change.digest {
            None => ("-", "deleted"),
            Some(d) if i == 0 && history.current.as_deref() == Some(d.as_str()) => {
                (d.as_str(), "current")
            }
            Some(d) => (d.as_str(), ""),
        };
        out.push_str(format!("{:<32} {digest:<71} {marker}", change.time).trim_end());
        out.push('\n');
    }
    out
}

#[derive(Deserialize)]
struct RolledBack {
    digest: String,
    previous: Option<String>,
}

async fn rollback(
    reference: &str,
    to: Option<&str>,
    steps: Option<u64>,
    remote: &RemoteArgs,
) -> Result<(), String> {
    let (name, tag) = parse_reference(reference)?;
    let query = match (to, steps) {
        (Some(to), _) => {
            let digest: Digest = to.parse().map_err(|_| format!("invalid digest {to:?}"))?;
            format!("?to={digest}")
        }
        (None, Some(steps)) => format!("?steps={steps}"),
        (None, None) => String::new(),
    };
    let mut client = remote.client()?;
    let path = format!("/v2/{name}/_berth/tags/{tag}/rollback{query}");
    let reply = client.send(Method::POST, &path).await?;
    if reply.status != StatusCode::OK {
        return Err(format!(
            "rollback of {name}:{tag}: {}",
            reply.error_message()
        ));
    }
    let done: RolledBack = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("the registry answered an unreadable rollback: {e}"))?;
    let previous = done
        .previous
        .as_deref()
        .unwrap_or("nothing: the tag was deleted");
    println!("{name}:{tag} -> {} (was {previous})", done.digest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_default_to_latest_and_are_validated() {
        let (name, tag) = parse_reference("team/app:v1.2").unwrap();
        assert_eq!((name.as_str(), tag.as_str()), ("team/app", "v1.2"));
        let (name, tag) = parse_reference("team/app").unwrap();
        assert_eq!((name.as_str(), tag.as_str()), ("team/app", "latest"));
        assert!(parse_reference("Team/app:v1").is_err());
        assert!(parse_reference("app:-v1").is_err());
        assert!(parse_reference("app/../x:v1").is_err());
    }

    #[test]
    fn history_tables_mark_the_current_change_and_deletions() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let history = History {
            current: Some(a.clone()),
            history: vec![
                Change {
                    digest: Some(a.clone()),
                    time: "2025-11-24T16:00:03.000000000Z".into(),
                },
                Change {
                    digest: None,
                    time: "2025-11-24T16:00:02.000000000Z".into(),
                },
                Change {
                    digest: Some(b.clone()),
                    time: "2025-11-24T16:00:01.000000000Z".into(),
                },
                Change {
                    digest: Some(a.clone()),
                    time: "2025-11-24T16:00:00.000000000Z".into(),
                },
            ],
        };
        let table = render_history("app:v1", &history);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], format!("app:v1 -> {a}"));
        assert!(lines[1].starts_with("TIME") && lines[1].contains("DIGEST"));
        assert!(lines[2].contains(&a) && lines[2].ends_with("current"));
        assert!(lines[3].ends_with("deleted"));
        assert!(lines[4].ends_with(&b));
        assert!(
            lines[5].ends_with(&a),
            "older entries of it are not current"
        );
        assert_eq!(lines.len(), 6);
    }
}
