//! Shared helpers for podvm's integration tests; include with `mod support;`.
//!
//! - [`kvm`]: what kind of KVM this host offers.
//! - [`nested`]: run named shell checks inside one throwaway L1 VM with real nested KVM
//!   (or directly on a host that has real KVM), and collect their output.
//! - [`artifacts`]: where `make` put the podvm binaries, and skip-or-fail when they are missing.
//! - [`e2e`]: one shared batch per E2E test binary, and the usual batch settings.
//! - [`privilege`]: guest root's attempts to leave privileged nodes in a share, and the checks.

// Each test binary uses only part of this module.
#![allow(dead_code, unused_imports)]

pub mod artifacts;
pub mod e2e;
pub mod kvm;
pub mod nested;
pub mod privilege;
