//! kiln-train's training runs, one binary. Each test here seeds the backend's random generator
//! and holds `kiln_testkit::seeded_section()`; the tests that build models without seeding live
//! in the `outputs` binary, so that their draws cannot land inside a seeded run. (Every test
//! binary links Burn: fewer binaries keep the build's link time and disk use down.)

mod fpt;
mod m2;
mod pretrain;
mod steps;
mod training;
