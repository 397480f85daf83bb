//! ringbeat: a Linux TCP heartbeat server that holds a million connections on
//! one box and tells, within a tick, which peers have gone silent.
//!
//! The crate is split the way the kernel concepts are: `protocol` (wire v1,
//! no I/O), `config`, and — added as they land — the sans-IO shard core, the
//! io_uring driver, the server, stats and the client library.

#![deny(unsafe_code)]

pub mod auth;
#[allow(unsafe_code)]
pub mod buf_ring;
pub mod client;
pub mod cluster;
pub mod config;
pub mod conn_table;
pub mod engine;
pub mod events;
pub mod heartbeat;
pub mod load;
pub mod mailbox;
pub mod metrics_http;
pub mod per_ip;
pub mod protocol;
pub mod proxy_v2;
pub mod registry;
#[allow(unsafe_code)]
pub mod ring;
pub mod send_pool;
pub mod server;
pub mod shard;
pub mod stash;
pub mod stats;
pub mod system_check;
pub mod user_data;
