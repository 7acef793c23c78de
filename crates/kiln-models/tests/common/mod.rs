//! Shared by the kiln-models integration tests: kiln-testkit's helpers.
#![allow(unused_imports)]

pub use kiln_testkit::{
    RefTensor, asset, device_under_test, fixtures, int_tensor, kiln_home, max_abs_diff,
    read_reference, values,
};
