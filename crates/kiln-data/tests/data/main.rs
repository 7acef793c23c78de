//! kiln-data's integration tests, one binary: every test binary links Burn, so one per crate
//! keeps the build's link time and disk use down. Each module is one area.

mod bbc_news;
mod held_out;
mod text;
