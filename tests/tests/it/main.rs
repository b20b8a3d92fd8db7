//! End-to-end tests: real `kobo-coord` and `kobo-agent` processes, real
//! HTTPS, a real SQLite file; only the LLM is the fake in `kobo_tests::fake_llm`.
//! `llm` tests the agent's LLM backends directly against that fake.

mod autoscale;
mod bad_input;
mod cancel;
mod chaos;
mod chaos_clock;
mod chaos_disk;
mod chaos_load;
mod chaos_net;
mod cli;
mod cli_help;
mod crash;
mod dashboard;
mod demo;
mod enrollment;
mod failover;
mod gateway;
mod gateway_midstream;
mod happy;
mod idempotency;
mod kubernetes;
mod limits;
mod llm;
mod mcp;
mod metrics;
mod packaging;
mod patroni;
mod provision;
mod retries;
mod routing;
mod scale_in;
mod scaling;
mod security_audit;
mod security_data;
mod security_hardening;
mod security_limits;
mod security_payloads;
mod security_roles;
mod security_tls;
mod shapes;
mod sqlite_reporting;
mod tenancy;
mod tidy;
mod usage;
