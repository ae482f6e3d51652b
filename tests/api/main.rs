//! Integration tests: the real application against real PostgreSQL and Redis.
//! One binary (one link step) holding a module per area.

mod admin;
mod auth;
mod bad_input;
mod billing;
mod browser;
mod cli;
mod connections;
mod email_cap;
mod fake_stripe;
mod faults;
mod headers;
mod health;
mod helpers;
mod jobs;
mod logs;
mod mail;
mod metrics;
mod pages;
mod private_servers;
mod rate_limit;
mod scale;
mod security;
mod smtp_server;
mod stripe;
mod sweep;
mod teams;
mod visitor;
mod webhooks;
