//! tether-ingress (work in progress)
pub mod auth;
pub mod config;
pub mod error;
pub mod id;
pub mod metrics;
pub mod parse;
pub mod replica;
pub mod route;
pub mod sink;
