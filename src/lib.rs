//! kube-pim: Privileged Identity Management for Kubernetes RBAC.
//!
//! Nobody holds standing access to powerful roles: people are made eligible
//! (`EligibleAssignment`), activate a role for a bounded time (`ActivationRequest`) under a
//! per-role policy (`RoleSetting`), and the operator creates and removes the bindings.
//!
//! Modules: [`api`] (the CRD types, pure data), [`authz`] (who may bind what), [`crdgen`] (CRD YAML), [`operator`] (the
//! long-running process), [`plugin`] (`kubectl pim`), [`policies`] (the in-apiserver guards), [`sweep`] (the independent reaper), [`testenv`] (a real local
//! control plane for tests and demos),
//! [`time`] (chrono <-> Kubernetes time), [`error`].

pub mod api;
pub mod authz;
pub mod bench;
pub mod cli;
pub mod controller;
pub mod crdgen;
pub mod decide;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod operator;
pub mod plugin;
pub mod policies;
pub mod rbac;
pub mod sweep;
pub mod testenv;
pub mod time;
pub mod webhook;

pub use error::{Error, Result};
