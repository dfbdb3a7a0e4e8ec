//! Fixtures shared by the webhook tests (they live in kubetune-test-support).
#![allow(unused_imports)]

pub use kubetune_test_support::admission::*;
