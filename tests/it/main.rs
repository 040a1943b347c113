//! Berth's integration tests, in one binary: each runs a real server on a
//! real loopback socket (or the `berth` binary itself) and speaks to it the
//! way a client would. One module per area; the shared set-up lives in
//! `support` (and the lifecycle helpers in `lifecycle_support`).

mod lifecycle_support;
// The S3 tests' counting proxy in front of Garage.
#[path = "support/fault_proxy.rs"]
mod fault_proxy;
mod support;

mod api_auth;
mod api_base;
mod api_blobs;
mod api_listing;
mod api_manifests;
mod api_uploads;
mod audit;
mod cli;
mod cli_tag;
mod events;
mod fuzz;
mod garage_fixture;
mod garage_metrics;
mod garage_redirect;
mod garage_s3;
mod garage_s3_faults;
mod gc;
mod host_header;
mod integrity;
mod limits;
mod manifest_limits;
mod metrics;
mod mirror;
mod oci_client;
mod quotas;
mod retention;
mod robots;
mod settings;
mod tag_details;
mod tag_history;
mod tls;
mod traces;
mod transport;
mod ui;
mod zero_copy;
