//! Tandem's integration tests: a real server on an ephemeral port (or the real binary, for the
//! crash and metrics tests), real clients: `tandem-sync`'s, raw WebSockets, HTTP, Node.js with
//! the npm packages, and headless Chromium. One test binary, a module per area; the shared
//! harness is [`support`].

mod support;

mod admin;
mod auth;
mod bad_input;
mod browser;
mod client;
mod cluster;
mod crash;
mod dashboard;
mod events;
mod hocuspocus;
mod http;
mod js;
mod metrics;
mod postgres;
mod sync;
mod versions;
mod webhooks;
